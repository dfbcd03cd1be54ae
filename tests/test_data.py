"""Tests for keras_densenet.data: the digits TFDS builder and the tf.data pipelines.

Datasets other than digits run on `tfds.testing.mock_data`, which yields random examples (the same
ones for every split) through the real TFDS builders.
"""

import collections
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets

from keras_densenet import data
from keras_densenet.data import digits as digits_lib
from keras_densenet.data import pipeline


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A TFDS data folder with the digits dataset prepared once for this module."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("digits", data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="module")
def digits_info(digits_dir):
    return data.get_dataset_info("digits", data_dir=digits_dir)


@pytest.fixture(scope="module")
def sklearn_digits():
    return sklearn_datasets.load_digits()


def _load_split(data_dir, split):
    """Return (images uint8 [N, 8, 8, 1], labels [N], indices [N]) of a digits split in TFDS order."""
    dataset = tfds.load("digits", split=split, data_dir=data_dir)
    examples = list(tfds.as_numpy(dataset))
    images = np.stack([example["image"] for example in examples])
    labels = np.array([example["label"] for example in examples])
    indices = np.array([example["index"] for example in examples])
    return images, labels, indices


def _collect(dataset):
    """Return all images and labels of a batched dataset as two numpy arrays."""
    images, labels = [], []
    for image_batch, label_batch in dataset:
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _example_keys(images, labels):
    """Return one hashable key per example, for comparing datasets as multisets."""
    return [(image.tobytes(), int(label)) for image, label in zip(images, labels)]


# The digits builder.


def test_digits_split_counts(digits_dir):
    builder = tfds.builder("digits", data_dir=digits_dir)
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360
    assert builder.info.version == "1.0.0"


def test_digits_split_follows_index_rule(digits_dir):
    _, _, train_indices = _load_split(digits_dir, "train")
    _, _, test_indices = _load_split(digits_dir, "test")
    assert len(set(train_indices)) == 1437
    assert len(set(test_indices)) == 360
    assert not set(train_indices) & set(test_indices)
    assert set(test_indices) == {index for index in range(1797) if index % 5 == 0}
    assert set(train_indices) == {index for index in range(1797) if index % 5 != 0}


def test_digits_pixels_and_labels_match_sklearn(digits_dir, sklearn_digits):
    for split in ("train", "test"):
        images, labels, indices = _load_split(digits_dir, split)
        expected = ((sklearn_digits.images[indices].astype(np.int64) * 255 + 8) // 16).astype(np.uint8)
        np.testing.assert_array_equal(images[..., 0], expected)
        np.testing.assert_array_equal(labels, sklearn_digits.target[indices])


def test_digits_scale_pixels_formula():
    np.testing.assert_array_equal(digits_lib.scale_pixels([0, 1, 8, 15, 16]), [0, 16, 128, 239, 255])
    assert digits_lib.scale_pixels([16]).dtype == np.uint8


def test_digits_tfds_load_as_supervised(digits_dir):
    dataset = tfds.load("digits", split="test", data_dir=digits_dir, as_supervised=True)
    image, label = next(iter(dataset))
    assert image.shape == (8, 8, 1)
    assert image.dtype == tf.uint8
    assert label.dtype == tf.int64
    assert int(dataset.cardinality()) == 360


def test_digits_normalization_constants_match_train_split(digits_dir):
    images, _, _ = _load_split(digits_dir, "train")
    scaled = images.astype(np.float64) / 255.0
    assert pipeline.DIGITS_MEAN[0] == pytest.approx(scaled.mean(), abs=1e-7)
    assert pipeline.DIGITS_STD[0] == pytest.approx(scaled.std(), abs=1e-7)


def test_digits_dataset_info(digits_info):
    assert digits_info.name == "digits"
    assert digits_info.num_classes == 10
    assert digits_info.image_shape == (8, 8, 1)
    assert digits_info.train_split == "train"
    assert digits_info.test_split == "test"
    assert digits_info.num_train_examples == 1437
    assert digits_info.num_test_examples == 360
    assert digits_info.preprocessing == "digits"
    assert digits_info.augment_by_default is False
    assert digits_info.mean == pipeline.DIGITS_MEAN
    assert digits_info.std == pipeline.DIGITS_STD
    assert digits_info.label_names == tuple(str(digit) for digit in range(10))


# make_dataset on digits.


def test_make_dataset_batch_shapes_and_dtypes(digits_info, digits_dir):
    dataset = data.make_dataset(digits_info, "train", 64, training=True, seed=0, data_dir=digits_dir)
    images, labels = next(iter(dataset))
    assert images.shape == (64, 8, 8, 1)
    assert images.dtype == tf.float32
    assert labels.shape == (64,)
    assert labels.dtype == tf.int64
    assert dataset.element_spec[0].shape.as_list() == [64, 8, 8, 1]


def test_make_dataset_eval_normalizes_in_tfds_order(digits_info, digits_dir):
    raw_images, raw_labels, _ = _load_split(digits_dir, "test")
    dataset = data.make_dataset(digits_info, "test", 50, training=False, data_dir=digits_dir)
    images, labels = _collect(dataset)
    expected = (raw_images / 255.0 - digits_info.mean[0]) / digits_info.std[0]
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)


def test_make_dataset_eval_keeps_last_partial_batch(digits_info, digits_dir):
    dataset = data.make_dataset(digits_info, "test", 64, training=False, data_dir=digits_dir)
    batch_sizes = [int(labels.shape[0]) for _, labels in dataset]
    assert batch_sizes == [64] * 5 + [40]
    assert len(batch_sizes) == data.steps_per_epoch(digits_info, "test", 64, drop_remainder=False)


def test_make_dataset_eval_is_deterministic(digits_info, digits_dir):
    dataset = data.make_dataset(digits_info, "test", 64, training=False, data_dir=digits_dir)
    first_images, first_labels = _collect(dataset)
    second_images, second_labels = _collect(dataset)
    np.testing.assert_array_equal(first_images, second_images)
    np.testing.assert_array_equal(first_labels, second_labels)


def test_make_dataset_reshuffles_every_epoch(digits_info, digits_dir):
    dataset = data.make_dataset(
        digits_info, "train", 256, training=True, seed=3, data_dir=digits_dir, drop_remainder=False
    )
    first_images, first_labels = _collect(dataset)
    second_images, second_labels = _collect(dataset)
    assert len(first_labels) == 1437
    assert not np.array_equal(first_labels, second_labels)
    first_keys = _example_keys(first_images, first_labels)
    second_keys = _example_keys(second_images, second_labels)
    assert collections.Counter(first_keys) == collections.Counter(second_keys)
    eval_images, eval_labels = _collect(
        data.make_dataset(digits_info, "train", 256, training=False, data_dir=digits_dir)
    )
    assert collections.Counter(first_keys) == collections.Counter(_example_keys(eval_images, eval_labels))


def test_make_dataset_seed_reproduces_order(digits_info, digits_dir):
    def two_epochs(seed):
        dataset = data.make_dataset(digits_info, "train", 128, training=True, seed=seed, data_dir=digits_dir)
        return _collect(dataset)[1], _collect(dataset)[1]

    first_run = two_epochs(7)
    second_run = two_epochs(7)
    other_seed = two_epochs(8)
    np.testing.assert_array_equal(first_run[0], second_run[0])
    np.testing.assert_array_equal(first_run[1], second_run[1])
    assert not np.array_equal(first_run[0], other_seed[0])


def test_steps_per_epoch_matches_batches(digits_info, digits_dir):
    dataset = data.make_dataset(digits_info, "train", 64, training=True, seed=0, data_dir=digits_dir)
    batches = sum(1 for _ in dataset)
    assert batches == 1437 // 64
    assert data.steps_per_epoch(digits_info, "train", 64) == batches
    assert data.steps_per_epoch(digits_info, "train", 64, drop_remainder=False) == 23


def test_make_dataset_take_limits_examples(digits_info, digits_dir):
    dataset = data.make_dataset(digits_info, "test", 8, training=False, data_dir=digits_dir, take=20)
    _, labels = _collect(dataset)
    _, all_labels = _collect(data.make_dataset(digits_info, "test", 8, training=False, data_dir=digits_dir))
    np.testing.assert_array_equal(labels, all_labels[:20])


def test_make_dataset_input_context_shards(digits_info, digits_dir):
    full_images, _ = _collect(data.make_dataset(digits_info, "test", 64, training=False, data_dir=digits_dir))
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = data.make_dataset(
            digits_info, "test", 64, training=False, input_context=context, data_dir=digits_dir
        )
        assert next(iter(dataset))[0].shape[0] == 32
        shards.append(_collect(dataset)[0])
    np.testing.assert_array_equal(shards[0], full_images[0::2])
    np.testing.assert_array_equal(shards[1], full_images[1::2])
    assert len(shards[0]) + len(shards[1]) == 360


def test_make_dataset_training_shards_are_disjoint(digits_info, digits_dir):
    _, eval_labels = _collect(data.make_dataset(digits_info, "test", 64, training=False, data_dir=digits_dir))
    label_counts = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = data.make_dataset(
            digits_info, "test", 20, training=True, seed=1, input_context=context, data_dir=digits_dir
        )
        _, labels = _collect(dataset)
        assert len(labels) == 180  # 180 examples per shard, 18 batches of 10.
        label_counts.append(collections.Counter(labels.tolist()))
    assert label_counts[0] == collections.Counter(eval_labels[0::2].tolist())
    assert label_counts[1] == collections.Counter(eval_labels[1::2].tolist())


def test_make_dataset_digits_augment_shifts_without_flip(digits_info, digits_dir):
    dataset = data.make_dataset(
        digits_info, "test", 360, training=True, augment=True, seed=0, data_dir=digits_dir, take=360
    )
    images, _ = next(iter(dataset))
    assert images.shape == (360, 8, 8, 1)
    eval_images, _ = _collect(data.make_dataset(digits_info, "test", 360, training=False, data_dir=digits_dir))
    eval_keys = {image.tobytes() for image in eval_images}
    changed = sum(image.tobytes() not in eval_keys for image in images.numpy())
    assert changed > 180


# Errors.


def test_unknown_dataset_raises():
    with pytest.raises(ValueError, match=r"Unknown dataset 'no_such_dataset'.*Received: dataset='no_such_dataset'"):
        data.get_dataset_info("no_such_dataset")


def test_empty_dataset_name_raises():
    with pytest.raises(ValueError, match=r"`dataset` must be a TFDS dataset name.*Received: dataset=''"):
        data.get_dataset_info("")


def test_invalid_split_raises(digits_info, digits_dir):
    with pytest.raises(ValueError, match=r"`split` must be 'train' or 'test'.*Received: split='validation'"):
        data.make_dataset(digits_info, "validation", 8, training=False, data_dir=digits_dir)
    with pytest.raises(ValueError, match=r"Received: split='valid'"):
        data.steps_per_epoch(digits_info, "valid", 8)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_invalid_global_batch_size_raises(digits_info, digits_dir, batch_size):
    with pytest.raises(ValueError, match=r"`global_batch_size` must be a positive integer.*Received: global_batch"):
        data.make_dataset(digits_info, "train", batch_size, training=True, data_dir=digits_dir)
    with pytest.raises(ValueError, match=r"`global_batch_size` must be a positive integer"):
        data.steps_per_epoch(digits_info, "train", batch_size)


def test_invalid_take_raises(digits_info, digits_dir):
    with pytest.raises(ValueError, match=r"`take` must be a positive integer.*Received: take=0"):
        data.make_dataset(digits_info, "train", 8, training=True, data_dir=digits_dir, take=0)


def test_info_of_wrong_type_raises(digits_dir):
    with pytest.raises(ValueError, match=r"`info` must be the DatasetInfo.*Received: info=str"):
        data.make_dataset("digits", "train", 8, training=True, data_dir=digits_dir)


def test_batch_size_not_divisible_by_replicas_raises(digits_info, digits_dir):
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(ValueError, match=r"divisible by the number of replicas \(3\).*Received: global_batch_size=64"):
        data.make_dataset(digits_info, "train", 64, training=True, input_context=context, data_dir=digits_dir)


def test_imagenet_without_manual_dir_raises():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match=r"'imagenet2012' must be downloaded by hand.*Received: manual_dir=None"):
            data.get_dataset_info("imagenet2012")


def test_non_image_dataset_raises():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match=r"not an image-classification dataset.*Received: dataset='imdb_reviews'"):
            data.get_dataset_info("imdb_reviews")


def test_variable_size_generic_dataset_raises():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match=r"fixed \(height, width, channels\).*Received: dataset='oxford_flowers102'"):
            data.get_dataset_info("oxford_flowers102")


# CIFAR-style datasets and generic datasets on mock data.


def test_cifar10_info_on_mock_data():
    with tfds.testing.mock_data(num_examples=6):
        info = data.get_dataset_info("cifar10")
    assert info.preprocessing == "cifar"
    assert info.image_shape == (32, 32, 3)
    assert info.num_classes == 10
    assert info.augment_by_default is True
    assert info.mean == (0.4914, 0.4822, 0.4465)
    assert info.std == (0.2470, 0.2435, 0.2616)
    assert info.num_train_examples == 6


def test_svhn_is_not_augmented_by_default():
    with tfds.testing.mock_data(num_examples=2):
        info = data.get_dataset_info("svhn_cropped")
    assert info.preprocessing == "cifar"
    assert info.augment_by_default is False
    assert info.mean == pipeline.CIFAR_STATS["svhn_cropped"][0]


def test_cifar10_eval_normalization_values():
    with tfds.testing.mock_data(num_examples=6):
        info = data.get_dataset_info("cifar10")
        raw = list(tfds.as_numpy(tfds.load("cifar10", split="test", as_supervised=True)))
        images, labels = _collect(data.make_dataset(info, "test", 4, training=False))
    raw_images = np.stack([image for image, _ in raw]).astype(np.float64)
    expected = (raw_images / 255.0 - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, [label for _, label in raw])


def test_cifar10_augmentation_changes_train_images_only():
    with tfds.testing.mock_data(num_examples=8):
        info = data.get_dataset_info("cifar10")
        eval_dataset = data.make_dataset(info, "test", 8, training=False)
        eval_first, _ = _collect(eval_dataset)
        eval_second, _ = _collect(eval_dataset)
        train_dataset = data.make_dataset(info, "train", 8, training=True, seed=5)
        train_first, _ = _collect(train_dataset)
        train_second, _ = _collect(train_dataset)
        plain, _ = _collect(data.make_dataset(info, "train", 8, training=True, augment=False, seed=5))
    assert train_first.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(eval_first, eval_second)
    eval_keys = {image.tobytes() for image in eval_first}
    # Mock data yields the same examples in every split, so unaugmented training images equal eval ones.
    assert {image.tobytes() for image in plain} == eval_keys
    assert sum(image.tobytes() not in eval_keys for image in train_first) >= 6
    assert {image.tobytes() for image in train_first} != {image.tobytes() for image in train_second}


def test_cifar10_augmentation_changes_every_epoch():
    # One example, so only new augmentation seeds (not the shuffle order) can change the output.
    with tfds.testing.mock_data(num_examples=1):
        info = data.get_dataset_info("cifar10")
        dataset = data.make_dataset(info, "train", 1, training=True, seed=2)
        epochs = [_collect(dataset)[0] for _ in range(4)]
    assert len({images.tobytes() for images in epochs}) > 1


def test_cifar10_augmentation_is_reproducible_with_seed():
    with tfds.testing.mock_data(num_examples=4):
        info = data.get_dataset_info("cifar10")
        first, _ = _collect(data.make_dataset(info, "train", 4, training=True, seed=11))
        second, _ = _collect(data.make_dataset(info, "train", 4, training=True, seed=11))
    np.testing.assert_array_equal(first, second)


def test_generic_dataset_scales_with_half():
    with tfds.testing.mock_data(num_examples=3):
        info = data.get_dataset_info("mnist")
        raw = list(tfds.as_numpy(tfds.load("mnist", split="test", as_supervised=True)))
        images, _ = _collect(data.make_dataset(info, "test", 3, training=False))
    assert info.preprocessing == "generic"
    assert info.image_shape == (28, 28, 1)
    assert info.mean == (0.5,)
    assert info.std == (0.5,)
    assert info.augment_by_default is False
    raw_images = np.stack([image for image, _ in raw]).astype(np.float64)
    np.testing.assert_allclose(images, (raw_images / 255.0 - 0.5) / 0.5, atol=1e-5)


def _crop_candidates(image, padding, flip):
    """All outputs that a pad-crop(-flip) augmentation may return for `image`."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    candidates = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[top : top + height, left : left + width]
            candidates[crop.tobytes()] = (top, left, False)
            if flip:
                candidates[crop[:, ::-1].tobytes()] = (top, left, True)
    return candidates


def test_random_crop_and_flip_values():
    image = np.arange(1, 6 * 5 * 2 + 1, dtype=np.int32).reshape(6, 5, 2)
    candidates = _crop_candidates(image, padding=2, flip=True)
    outcomes = set()
    for seed in range(60):
        output = pipeline.random_crop_and_flip(tf.constant(image), tf.constant([seed, 1]), padding=2).numpy()
        assert output.shape == image.shape
        assert output.tobytes() in candidates
        outcomes.add(candidates[output.tobytes()])
    assert {flipped for _, _, flipped in outcomes} == {False, True}
    assert len({(top, left) for top, left, _ in outcomes}) > 10


def test_random_crop_without_flip_never_mirrors():
    image = np.arange(1, 8 * 8 + 1, dtype=np.int32).reshape(8, 8, 1)
    unflipped = _crop_candidates(image, padding=1, flip=False)
    for seed in range(30):
        output = pipeline.random_crop_and_flip(tf.constant(image), tf.constant([seed, 2]), padding=1, flip=False)
        assert output.numpy().tobytes() in unflipped


def test_random_crop_and_flip_pads_with_zeros():
    image = np.full((4, 4, 1), 9, dtype=np.uint8)
    outputs = [
        pipeline.random_crop_and_flip(tf.constant(image), tf.constant([seed, 0]), padding=4).numpy()
        for seed in range(20)
    ]
    assert set(np.unique(np.stack(outputs)).tolist()) == {0, 9}


# ImageNet-style preprocessing.


def test_imagenet_eval_crop_takes_center_of_resized_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(128, 160, 3)).astype(np.uint8)
    output = pipeline.imagenet_eval_crop(tf.constant(image)).numpy()
    resized = tf.image.resize(tf.constant(image, tf.float32), (256, 320), method="bilinear").numpy()
    assert output.shape == (224, 224, 3)
    np.testing.assert_allclose(output, resized[16:240, 48:272], atol=1e-4)


def test_imagenet_eval_crop_without_resize_is_exact():
    image = np.arange(300 * 256 * 3, dtype=np.float32).reshape(300, 256, 3) % 251
    output = pipeline.imagenet_eval_crop(tf.constant(image)).numpy()
    np.testing.assert_array_equal(output, image[38:262, 16:240])


def test_imagenet_train_crop_geometry():
    # Channel 0 stores the row and channel 1 the column of each pixel. Bilinear resizing keeps these
    # linear ramps, so each output shows which crop it came from and whether it was flipped.
    height, width = 100, 120
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([rows, columns, np.zeros_like(rows)], axis=-1).astype(np.float32)
    flips = set()
    crops = set()
    for seed in range(30):
        output = pipeline.imagenet_train_crop(tf.constant(image), tf.constant([seed, 3])).numpy()
        assert output.shape == (224, 224, 3)
        assert output.dtype == np.float32
        top, bottom = output[..., 0].min(), output[..., 0].max()
        left, right = output[..., 1].min(), output[..., 1].max()
        crop_height, crop_width = bottom - top + 1, right - left + 1
        area_fraction = crop_height * crop_width / (height * width)
        assert 0.08 - 0.01 <= area_fraction <= 1.0
        assert 3 / 4 - 0.05 <= crop_width / crop_height <= 4 / 3 + 0.05 or area_fraction == 1.0
        flips.add(bool(output[0, 0, 1] > output[0, -1, 1]))
        crops.add((round(top), round(left), round(crop_height), round(crop_width)))
    assert flips == {False, True}
    assert len(crops) > 20


def test_imagenet_make_dataset_on_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        info = data.get_dataset_info("imagenet2012", manual_dir=str(tmp_path))
        train_images, train_labels = _collect(
            data.make_dataset(info, "train", 2, training=True, seed=0, manual_dir=str(tmp_path))
        )
        eval_dataset = data.make_dataset(info, "validation", 3, training=False, manual_dir=str(tmp_path))
        eval_first, eval_labels = _collect(eval_dataset)
        eval_second, _ = _collect(eval_dataset)
        # The pipeline reads the encoded JPEG bytes, so the reference decodes the same bytes.
        raw = tfds.load(
            "imagenet2012", split="validation", as_supervised=True, decoders={"image": tfds.decode.SkipDecoding()}
        )
        raw = [(tf.io.decode_jpeg(encoded, channels=3), label.numpy()) for encoded, label in raw]
    assert info.preprocessing == "imagenet"
    assert info.test_split == "validation"
    assert info.image_shape == (224, 224, 3)
    assert info.mean == (0.485, 0.456, 0.406)
    assert info.std == (0.229, 0.224, 0.225)
    assert train_images.shape == (4, 224, 224, 3)
    assert train_labels.dtype == np.int64
    assert eval_first.shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(eval_first, eval_second)
    for output, (raw_image, raw_label), label in zip(eval_first, raw, eval_labels):
        expected = pipeline.imagenet_eval_crop(raw_image).numpy() / 255.0
        expected = (expected - np.array(info.mean)) / np.array(info.std)
        np.testing.assert_allclose(output, expected, atol=1e-4)
        assert label == raw_label


# A real tf.distribute strategy. Virtual CPU devices must be configured before TensorFlow starts,
# so this test runs in a fresh Python process.

_MIRRORED_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
from keras_densenet import data

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
info = data.get_dataset_info("digits", data_dir=sys.argv[1])
contexts = []

def dataset_fn(input_context):
    contexts.append((input_context.num_input_pipelines, input_context.num_replicas_in_sync))
    return data.make_dataset(info, "test", 64, training=False, input_context=input_context, data_dir=sys.argv[1])

dataset = strategy.distribute_datasets_from_function(dataset_fn)
labels = []
shapes = set()
for images, batch_labels in dataset:
    for replica_images, replica_labels in zip(images.values, batch_labels.values):
        shapes.add(tuple(replica_images.shape))
        labels.extend(replica_labels.numpy().tolist())
print("contexts", contexts)
print("shapes", sorted(shapes))
print("labels", len(labels), sum(labels))
"""


def test_make_dataset_under_mirrored_strategy(digits_info, digits_dir, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), digits_dir], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _, eval_labels = _collect(data.make_dataset(digits_info, "test", 64, training=False, data_dir=digits_dir))
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["contexts"] == "[(1, 2)]"
    assert lines["shapes"] == "[(8, 8, 8, 1), (32, 8, 8, 1)]"
    assert lines["labels"] == f"{len(eval_labels)} {int(eval_labels.sum())}"
