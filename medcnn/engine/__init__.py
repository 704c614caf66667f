"""Training engine: YAML configs, datasets and subject-level splits, the (DDP) trainer, checkpoints."""

from medcnn.engine.checkpoint import load_checkpoint, save_checkpoint, sha256
from medcnn.engine.data import find_records, kfold_subjects, split_subjects, subject_of
from medcnn.engine.schema import load_train_config
from medcnn.engine.trainer import Trainer, TrainingError, train

__all__ = [
    "Trainer", "TrainingError", "find_records", "kfold_subjects", "load_checkpoint", "load_train_config", "save_checkpoint",
    "sha256", "split_subjects", "subject_of", "train",
]
