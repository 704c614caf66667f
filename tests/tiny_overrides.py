"""Config overrides for one-epoch tiny trainings (a module of its own: test files import it by name, and
``conftest`` is ambiguous with tests/prompt/conftest.py on sys.path)."""

TINY_OVERRIDES = [
    "train.epochs=1", "train.val_every=1", "train.patch_size=[32,32,32]", "train.batch_size=2",
    "train.samples_per_case=1", "model.name=unet", "model.kwargs.channels=[8,16,32]", "model.kwargs.strides=[2,2]",
    "model.kwargs.num_res_units=1", "preprocess.spacing=[4,4,4]",
    "inference.roi_size=[32,32,32]", "train.augment.names=[spatial,intensity]", "data.val_fraction=0.25",
]
