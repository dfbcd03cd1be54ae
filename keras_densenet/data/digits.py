"""TFDS builder `digits`: the 8x8 handwritten digits that scikit-learn ships, usable with no network.

`sklearn.datasets.load_digits()` returns 1,797 images with integer pixel values 0..16 (counts of set
pixels in 4x4 blocks of the original 32x32 bitmaps). The builder stores them as uint8 PNG images of
shape (8, 8, 1) scaled to 0..255 with

    pixel = (value * 255 + 8) // 16

which is `value * 255 / 16` rounded half up, so 0 maps to 0, 8 to 128 and 16 to 255.

The split is fixed: an example whose position in `load_digits()` order satisfies `index % 5 == 0` is
in `test` (360 examples), every other one is in `train` (1,437 examples). Each example stores that
position as the `index` feature, so the split can be checked.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TRAIN_EXAMPLES = 1437
NUM_TEST_EXAMPLES = 360
TEST_EVERY = 5


def scale_pixels(values):
    """Map scikit-learn digit values 0..16 to uint8 0..255 with `(value * 255 + 8) // 16`."""
    values = np.asarray(values, dtype=np.int64)
    return ((values * 255 + 8) // 16).astype(np.uint8)


def is_test_index(index):
    """Return whether the example at `index` in `load_digits()` order belongs to the `test` split."""
    return index % TEST_EVERY == 0


class Digits(tfds.core.GeneratorBasedBuilder):
    """The scikit-learn handwritten digits (8x8 grayscale, 10 classes) with a fixed train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: test = examples whose index % 5 == 0."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "The 1,797 8x8 handwritten digit images from scikit-learn (a copy of the UCI optical "
                "recognition of handwritten digits test set), pixels scaled from 0..16 to 0..255 with "
                "(value * 255 + 8) // 16. Split: test = index % 5 == 0 (360), train = the rest (1,437)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8, encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": tfds.features.Scalar(dtype=np.int64, doc="Position in load_digits() order."),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with scikit-learn, so nothing is downloaded.
        return {
            "train": self._generate_examples(test=False),
            "test": self._generate_examples(test=True),
        }

    def _generate_examples(self, test):
        from sklearn import datasets  # Imported here so that importing keras_densenet.data stays cheap.

        digits = datasets.load_digits()
        images = scale_pixels(digits.images)[..., np.newaxis]
        for index, (image, label) in enumerate(zip(images, digits.target)):
            if is_test_index(index) == test:
                yield index, {"image": image, "label": int(label), "index": index}
