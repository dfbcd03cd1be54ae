"""Input pipelines: TFDS image-classification datasets and the embedded `digits` dataset.

Importing this package registers the `digits` TFDS builder, so `tfds.load("digits")` works afterwards.
"""

from keras_densenet.data.digits import Digits
from keras_densenet.data.pipeline import DatasetInfo
from keras_densenet.data.pipeline import get_dataset_info
from keras_densenet.data.pipeline import make_dataset
from keras_densenet.data.pipeline import steps_per_epoch
