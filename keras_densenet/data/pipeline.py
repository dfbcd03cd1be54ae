"""tf.data input pipelines for TFDS image-classification datasets, with per-dataset preprocessing.

Four kinds of preprocessing, picked by dataset name:

- `digits`: the embedded scikit-learn digits (8x8x1), normalized with the train split's statistics.
- `cifar` (cifar10, cifar100, svhn_cropped): 32x32x3, normalized with per-dataset channel statistics.
  Augmentation pads 4 zero pixels on each side, takes a random 32x32 crop and flips horizontally at
  random, which is the standard augmentation behind "C10+" and "C100+" results.
- `imagenet` (imagenet2012): training takes a random resized crop (area 8%-100%, aspect ratio 3/4-4/3)
  to 224x224 and flips at random. Evaluation resizes the shorter side to 256 and takes the central
  224x224 crop.
- `generic` (any other TFDS dataset with `image` and `label` features of a fixed image size): scaled
  to [0, 1], then normalized with mean 0.5 and std 0.5 per channel.
"""

import dataclasses

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_densenet.data import digits as digits_lib

PREPROCESSING_KINDS = ("digits", "cifar", "imagenet", "generic")
KNOWN_DATASETS = ("digits", "cifar10", "cifar100", "svhn_cropped", "imagenet2012")

# Mean and std of all pixels of the digits train split after scaling to [0, 1], computed from the TFDS
# `digits` train split (1,437 images) with float64 numpy: `images.mean()` and `images.std()` (ddof=0).
# tests/test_data.py recomputes both.
DIGITS_MEAN = (0.3052609,)
DIGITS_STD = (0.3761576,)

# Commonly used per-channel statistics of the training splits in [0, 1] units, as published with many
# CIFAR and SVHN training scripts. They are not recomputed here because those datasets cannot be
# downloaded where this package is developed and tested (no network).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

# The ImageNet statistics that keras.applications.densenet.preprocess_input uses ("torch" mode).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN_SIZE = 224
IMAGENET_RESIZE_SIDE = 256

CIFAR_PADDING = 4
GENERIC_MEAN_STD = 0.5

# Upper bound on the example-level shuffle buffer. Cached datasets with fewer examples are shuffled
# completely. The ImageNet buffer stores encoded JPEG bytes, an estimated 1 GB for 10,000 images.
MAX_SHUFFLE_BUFFER = 100_000
IMAGENET_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Description of a dataset and its preprocessing, for building the model and the training loop.

    Attributes:
        name: TFDS name, for example "digits" or "cifar10".
        num_classes: Number of classes of the `label` feature.
        image_shape: (height, width, channels) of the images that `make_dataset` yields.
        train_split: Split used for training, "train".
        test_split: Split used for evaluation: "test", or "validation" for imagenet2012.
        num_train_examples: Number of examples in `train_split`.
        num_test_examples: Number of examples in `test_split`.
        preprocessing: One of "digits", "cifar", "imagenet" and "generic".
        augment_by_default: Whether `make_dataset` augments training data when `augment=None`.
        mean: Per-channel mean subtracted from images scaled to [0, 1].
        std: Per-channel standard deviation that divides the centered images.
        label_names: Class names from TFDS, or ("0", "1", ...) when TFDS has none.
    """

    name: str
    num_classes: int
    image_shape: tuple
    train_split: str
    test_split: str
    num_train_examples: int
    num_test_examples: int
    preprocessing: str
    augment_by_default: bool
    mean: tuple
    std: tuple
    label_names: tuple

    def num_examples(self, split):
        """Return the number of examples of `split`, which must be `train_split` or `test_split`.

        Raises:
            ValueError: if `split` is neither of the two.
        """
        if split == self.train_split:
            return self.num_train_examples
        if split == self.test_split:
            return self.num_test_examples
        raise ValueError(
            f"`split` must be {self.train_split!r} or {self.test_split!r} for dataset {self.name!r}. "
            f"Received: split={split!r}"
        )


def preprocessing_kind(name):
    """Return the preprocessing kind ("digits", "cifar", "imagenet" or "generic") for a TFDS name."""
    if name == "digits":
        return "digits"
    if name in CIFAR_STATS:
        return "cifar"
    if name == "imagenet2012":
        return "imagenet"
    return "generic"


def _base_name(name):
    """Strip a config and version ("cifar10:3.0.2", "imagenet2012/subset") from a TFDS name."""
    return name.split(":")[0].split("/")[0]


def _make_builder(name, data_dir=None):
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"`dataset` must be a TFDS dataset name such as 'digits' or 'cifar10'. Received: dataset={name!r}"
        )
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r}: use `--dataset=digits` (embedded, no download) or a TFDS "
            f"image-classification dataset such as {', '.join(KNOWN_DATASETS[1:])}. `tfds.list_builders()` "
            f"lists all names. Received: dataset={name!r}"
        ) from None


def _prepare(builder, manual_dir=None):
    """Run `builder.download_and_prepare()` unless the data is already there.

    Raises:
        ValueError: when the data needs a manual download that is missing, or the download fails.
    """
    if builder.is_prepared():
        return
    name = builder.name
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and manual_dir is None:
        raise ValueError(
            f"Dataset {name!r} must be downloaded by hand: put its archives in a folder and pass it as "
            f"`manual_dir` (`--manual_dir`). TFDS instructions: "
            f"{' '.join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())} Received: manual_dir=None"
        )
    # NOTE: without network, TFDS 4.9 retries each download 10 times before it raises (204 s for cifar10,
    # measured on a 2-core CPU machine).
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
        builder.download_and_prepare(download_config=download_config)
    except AssertionError as error:  # TFDS asserts that the manual folder exists and is not empty.
        raise ValueError(
            f"Preparing dataset {name!r} failed: {' '.join(str(error).split())} Received: manual_dir={manual_dir!r}"
        ) from error
    except OSError as error:  # requests' ConnectionError and file-system errors are OSErrors.
        raise ValueError(
            f"Downloading dataset {name!r} failed ({type(error).__name__}), and this machine may have no network. "
            f"Prepare the dataset with TFDS on a connected machine and copy the prepared files to "
            f"{builder.data_dir}, or pass the `--data_dir` that holds them, or use `--dataset=digits`, which "
            f"needs no download. Received: dataset={name!r}"
        ) from error


def _count_examples(builder, split):
    """Return the example count of `split`, from the TFDS metadata or, when it has none, the dataset."""
    splits = builder.info.splits
    if split in splits and splits[split].num_examples:
        return int(splits[split].num_examples)
    # Mocked datasets (tfds.testing.mock_data) carry no split metadata but set the cardinality.
    cardinality = int(builder.as_dataset(split=split).cardinality())
    if cardinality < 0:
        raise ValueError(
            f"The number of examples of split {split!r} of dataset {builder.name!r} is unknown: TFDS has no "
            f"split metadata and the dataset has no known cardinality. Received: split={split!r}"
        )
    return cardinality


def _image_shape(builder, kind):
    if kind == "imagenet":
        return (IMAGENET_TRAIN_SIZE, IMAGENET_TRAIN_SIZE, 3)
    shape = tuple(builder.info.features["image"].shape)
    if len(shape) != 3 or None in shape:
        raise ValueError(
            f"Dataset {builder.name!r} has images of shape {shape}, but only datasets with a fixed "
            f"(height, width, channels) image size are supported; use a dataset with fixed-size images. "
            f"Received: dataset={builder.name!r}"
        )
    return shape


def _statistics(name, kind, channels):
    if kind == "digits":
        return DIGITS_MEAN, DIGITS_STD
    if kind == "cifar":
        return CIFAR_STATS[name]
    if kind == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return (GENERIC_MEAN_STD,) * channels, (GENERIC_MEAN_STD,) * channels


def get_dataset_info(name, data_dir=None, manual_dir=None):
    """Prepare a TFDS image-classification dataset when needed and describe it.

    Importing `keras_densenet.data` registers the embedded `digits` dataset, which is generated from
    scikit-learn and needs no network.

    Args:
        name: TFDS dataset name, for example "digits", "cifar10" or "imagenet2012".
        data_dir: TFDS data folder; None uses the TFDS default (`~/tensorflow_datasets` or $TFDS_DATA_DIR).
        manual_dir: Folder with manually downloaded archives, needed by imagenet2012.

    Returns:
        A `DatasetInfo`.

    Raises:
        ValueError: if the name is unknown, the dataset has no `image` and `label` features or no fixed
            image size, a manual download is missing, or the download fails.
    """
    builder = _make_builder(name, data_dir)
    base_name = _base_name(builder.name)
    features = builder.info.features
    if not isinstance(features, tfds.features.FeaturesDict) or not {"image", "label"} <= set(features.keys()):
        raise ValueError(
            f"Dataset {name!r} is not an image-classification dataset: it needs `image` and `label` "
            f"features. Use `--dataset=digits` or a dataset such as {', '.join(KNOWN_DATASETS[1:])}. "
            f"Received: dataset={name!r}"
        )
    kind = preprocessing_kind(base_name)
    image_shape = _image_shape(builder, kind)
    _prepare(builder, manual_dir)

    label_feature = features["label"]
    num_classes = int(label_feature.num_classes)
    names = tuple(label_feature.names) if label_feature.names else tuple(str(i) for i in range(num_classes))
    known_splits = set(builder.info.splits.keys())
    if kind == "imagenet" or (known_splits and "test" not in known_splits and "validation" in known_splits):
        test_split = "validation"
    else:
        test_split = "test"
    mean, std = _statistics(base_name, kind, image_shape[-1])
    return DatasetInfo(
        name=name,
        num_classes=num_classes,
        image_shape=image_shape,
        train_split="train",
        test_split=test_split,
        num_train_examples=_count_examples(builder, "train"),
        num_test_examples=_count_examples(builder, test_split),
        preprocessing=kind,
        augment_by_default=kind in ("cifar", "imagenet") and base_name != "svhn_cropped",
        mean=tuple(float(value) for value in mean),
        std=tuple(float(value) for value in std),
        label_names=names,
    )


def steps_per_epoch(info, split, global_batch_size, drop_remainder=True):
    """Return the number of global batches of `split`: floor division, or ceiling when keeping the remainder.

    Raises:
        ValueError: if `split` is not one of the info's splits or `global_batch_size` is not positive.
    """
    _check_positive_int("global_batch_size", global_batch_size)
    count = info.num_examples(split)
    if drop_remainder:
        return count // global_batch_size
    return -(-count // global_batch_size)


def _check_positive_int(argument, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{argument}` must be a positive integer. Received: {argument}={value!r}")


def normalize(image, mean, std):
    """Scale a 0..255 image of any dtype to [0, 1] and normalize it per channel, as float32."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_crop_and_flip(image, seed, padding=CIFAR_PADDING, flip=True):
    """Pad `padding` zero pixels on each side, crop back to the input size at random and flip at random.

    With the defaults this is the standard CIFAR augmentation.

    Args:
        image: Image tensor (height, width, channels) of any dtype.
        seed: Shape [2] integer tensor for the stateless random ops; equal seeds give equal outputs.
        padding: Pixels of zero padding on each side.
        flip: Whether to flip left-right with probability 1/2.

    Returns:
        An image with the shape and dtype of `image`.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, size=shape, seed=crop_seed)
    if not flip:
        return cropped
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def imagenet_train_crop(image, seed, size=IMAGENET_TRAIN_SIZE):
    """Take a random resized crop (area 8%-100%, aspect ratio 3/4-4/3) of `image`, resize it and flip at random.

    `tf.image.stateless_sample_distorted_bounding_box` makes up to 10 attempts and returns the whole
    image when none fits.

    Args:
        image: Image tensor (height, width, 3) with values 0..255, any dtype.
        seed: Shape [2] integer tensor for the stateless random ops.
        size: Height and width of the output.

    Returns:
        A float32 image of shape (size, size, 3) with values 0..255.
    """
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=box_seed,
        min_object_covered=0.08,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    resized = tf.image.resize(tf.cast(crop, tf.float32), (size, size), method="bilinear")
    return tf.image.stateless_random_flip_left_right(resized, seed=flip_seed)


def imagenet_eval_crop(image, size=IMAGENET_TRAIN_SIZE, resize_side=IMAGENET_RESIZE_SIDE):
    """Resize `image` so that its shorter side is `resize_side`, then take the central `size` x `size` crop.

    Args:
        image: Image tensor (height, width, channels) with values 0..255, any dtype.
        size: Height and width of the output.
        resize_side: Length of the shorter side after resizing (bilinear).

    Returns:
        A float32 image of shape (size, size, channels) with values 0..255.
    """
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = float(resize_side) / tf.minimum(height, width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), resize_side)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), resize_side)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_height, new_width]), method="bilinear")
    top = (new_height - size) // 2
    left = (new_width - size) // 2
    return tf.image.crop_to_bounding_box(resized, top, left, size, size)


def _decode_image(encoded):
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _check_make_dataset_args(info, split, global_batch_size, take):
    if not isinstance(info, DatasetInfo):
        raise ValueError(
            f"`info` must be the DatasetInfo that get_dataset_info() returns. Received: info={type(info).__name__}"
        )
    info.num_examples(split)
    _check_positive_int("global_batch_size", global_batch_size)
    if take is not None:
        _check_positive_int("take", take)


def _batch_size(global_batch_size, input_context):
    if input_context is None:
        return global_batch_size
    if global_batch_size % input_context.num_replicas_in_sync:
        raise ValueError(
            f"`global_batch_size` must be divisible by the number of replicas "
            f"({input_context.num_replicas_in_sync}). Received: global_batch_size={global_batch_size}"
        )
    return input_context.get_per_replica_batch_size(global_batch_size)


def _read_examples(info, split, training, seed, input_context, data_dir, manual_dir, take):
    """Return the (image, label) examples of this input pipeline and their number.

    ImageNet images stay encoded JPEG bytes, which the preprocessing decodes after shuffling.
    """
    builder = _make_builder(info.name, data_dir)
    _prepare(builder, manual_dir)
    is_imagenet = info.preprocessing == "imagenet"
    dataset = builder.as_dataset(
        split=split,
        as_supervised=True,
        shuffle_files=training and is_imagenet,
        decoders={"image": tfds.decode.SkipDecoding()} if is_imagenet else None,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    count = info.num_examples(split)
    if take is not None:
        dataset = dataset.take(take)
        count = min(take, count)
    if input_context is not None and input_context.num_input_pipelines > 1:
        # Sharding by example, not by file, because small datasets such as digits have one file.
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        count = -(-count // input_context.num_input_pipelines)
    return dataset, count


def make_dataset(
    info,
    split,
    global_batch_size,
    training,
    augment=None,
    seed=None,
    input_context=None,
    data_dir=None,
    manual_dir=None,
    drop_remainder=None,
    take=None,
):
    """Build the input pipeline of one split: (images float32 [B, H, W, C], labels int64 [B]) batches.

    Training pipelines cache the decoded uint8 examples in memory before any random op, shuffle at
    the example level with a new order every epoch, augment (stateless random ops with a fresh seed
    per example and epoch), batch and prefetch. Evaluation pipelines read in a fixed order, never
    augment, and center-crop ImageNet images.

    Args:
        info: `DatasetInfo` from `get_dataset_info`.
        split: `info.train_split` or `info.test_split`.
        global_batch_size: Batch size summed over all replicas.
        training: Whether to shuffle and augment.
        augment: Whether to augment training data; None uses `info.augment_by_default`. Ignored when
            `training` is False.
        seed: Integer seed that makes the shuffle order and augmentation reproducible; None draws
            them at random.
        input_context: `tf.distribute.InputContext` from `distribute_datasets_from_function`. With
            one, this pipeline reads only every `num_input_pipelines`-th example starting at
            `input_pipeline_id`, and batches by the per-replica batch size.
        data_dir: TFDS data folder, as for `get_dataset_info`.
        manual_dir: Folder with manually downloaded archives (imagenet2012).
        drop_remainder: Whether to drop the last partial batch; None drops it when training only.
        take: Number of examples to keep from the start of the split (before sharding), for quick
            runs; None keeps all.

    Returns:
        A `tf.data.Dataset`.

    Raises:
        ValueError: on an invalid split, batch size or `take`, or a batch size not divisible by the
            number of replicas.
    """
    _check_make_dataset_args(info, split, global_batch_size, take)
    if augment is None:
        augment = info.augment_by_default
    augment = bool(augment) and training
    if drop_remainder is None:
        drop_remainder = training
    batch_size = _batch_size(global_batch_size, input_context)
    kind = info.preprocessing

    dataset, count = _read_examples(info, split, training, seed, input_context, data_dir, manual_dir, take)

    if training:
        if kind == "imagenet":
            # NOTE: ImageNet is not cached: its decoded images do not fit in memory, so every epoch
            # reads the files again (in a new file order) and shuffles encoded JPEG bytes.
            buffer_size = min(count, IMAGENET_SHUFFLE_BUFFER)
        else:
            dataset = dataset.cache()
            buffer_size = min(count, MAX_SHUFFLE_BUFFER)
        dataset = dataset.shuffle(max(buffer_size, 1), seed=seed, reshuffle_each_iteration=True)

    preprocess = _make_preprocess(info, training, augment)
    if training and augment:
        # Each input pipeline gets its own augmentation seed, so replicas do not repeat the same crops.
        pipeline_seed = seed
        if seed is not None and input_context is not None:
            pipeline_seed = seed + input_context.input_pipeline_id
        seeds = tf.data.Dataset.random(seed=pipeline_seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds))
        dataset = dataset.map(lambda example, pair: preprocess(*example, pair), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda image, label: preprocess(image, label, None), num_parallel_calls=tf.data.AUTOTUNE)

    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _make_preprocess(info, training, augment):
    """Return a function (image, label, seed) -> (normalized float32 image, int64 label)."""
    kind = info.preprocessing
    mean, std = info.mean, info.std

    def preprocess(image, label, seed):
        if kind == "imagenet":
            image = _decode_image(image)
            image = imagenet_train_crop(image, seed) if augment else imagenet_eval_crop(image)
        elif augment:
            # Digits and unknown datasets are only shifted, because a mirrored digit or letter can
            # change its class. The shift is at most 1/8 of the image side (4 pixels at 32x32).
            padding = max(1, info.image_shape[0] // 8)
            image = random_crop_and_flip(image, seed, padding=padding, flip=kind == "cifar")
        image = normalize(image, mean, std)
        image = tf.ensure_shape(image, info.image_shape)
        return image, tf.cast(label, tf.int64)

    return preprocess
