"""Reading and writing scans with exact geometry (see :func:`load` and :func:`save`)."""

from medcnn.io.api import SOURCE_KEY, load, resample_image, save, target_grid
from medcnn.io.atomic import atomic_path, write_text_atomic
from medcnn.io.dicom import SeriesInfo, list_series
from medcnn.io.readers import SUPPORTED, detect_format, read_raw

__all__ = [
    "SOURCE_KEY", "SUPPORTED", "SeriesInfo", "atomic_path", "detect_format", "list_series", "load", "read_raw", "resample_image",
    "target_grid",
    "save", "write_text_atomic",
]
