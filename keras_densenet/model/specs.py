"""The table of DenseNet variants.

Every variant in Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017), is one frozen
`DenseNetSpec` record in `VARIANTS`. The builder reads nothing else, so a new variant is one new row.
"""

import dataclasses
from typing import Tuple

IMAGENET_STEM = "imagenet"
CIFAR_STEM = "cifar"
STEMS = (IMAGENET_STEM, CIFAR_STEM)


@dataclasses.dataclass(frozen=True)
class DenseNetSpec:
    """The hyperparameters that define one DenseNet architecture.

    Attributes:
        name: Variant name, also used as the Keras model name.
        blocks: Number of dense layers in each dense block.
        growth_rate: Channels each dense layer adds (`k` in the paper).
        initial_features: Output channels of the stem convolution.
        bottleneck: Whether each dense layer starts with a 1x1 convolution to `4 * growth_rate`
            channels (the "B" in DenseNet-BC).
        compression: Fraction of channels a transition keeps (`theta`); a transition outputs
            `floor(compression * channels)` channels.
        stem: `"imagenet"` (7x7/2 convolution, BN, ReLU, 3x3/2 max pooling) or `"cifar"` (one 3x3
            convolution).
        default_size: Input side length the variant was designed for.
    """

    name: str
    blocks: Tuple[int, ...]
    growth_rate: int
    initial_features: int
    bottleneck: bool
    compression: float
    stem: str
    default_size: int

    def __post_init__(self):
        if self.stem not in STEMS:
            raise ValueError(f"`stem` must be one of {STEMS}. Received: stem={self.stem!r}")
        if not self.blocks or any(n < 1 for n in self.blocks):
            raise ValueError(
                f"`blocks` must be a non-empty tuple of positive integers. Received: blocks={self.blocks!r}"
            )
        if self.growth_rate < 1:
            raise ValueError(f"`growth_rate` must be a positive integer. Received: growth_rate={self.growth_rate}")
        if self.initial_features < 1:
            raise ValueError(
                f"`initial_features` must be a positive integer. Received: initial_features={self.initial_features}"
            )
        if not 0.0 < self.compression <= 1.0:
            raise ValueError(f"`compression` must be in (0, 1]. Received: compression={self.compression}")

    @property
    def depth(self) -> int:
        """Number of convolution and dense layers, counted as the paper counts `L`."""
        convs_per_layer = 2 if self.bottleneck else 1
        transitions = len(self.blocks) - 1
        return 1 + convs_per_layer * sum(self.blocks) + transitions + 1

    @property
    def downsampling_steps(self) -> int:
        """Number of stride-2 reductions of the spatial size between input and head."""
        stem_steps = 2 if self.stem == IMAGENET_STEM else 0
        return stem_steps + len(self.blocks) - 1


def imagenet_spec(name, blocks, growth_rate=32, initial_features=64):
    """Return the spec of an ImageNet-layout DenseNet-BC (bottleneck, compression 0.5, 224x224)."""
    return DenseNetSpec(
        name=name,
        blocks=tuple(blocks),
        growth_rate=growth_rate,
        initial_features=initial_features,
        bottleneck=True,
        compression=0.5,
        stem=IMAGENET_STEM,
        default_size=224,
    )


def cifar_spec(name, depth, growth_rate, bottleneck):
    """Return the spec of a CIFAR-layout DenseNet of depth `L` with three equal dense blocks.

    The paper's CIFAR networks have three dense blocks of `(L - 4) / 3` dense layers, or `(L - 4) / 6`
    with bottlenecks because each dense layer then has two convolutions. DenseNet-BC pairs the
    bottleneck with compression 0.5 and a stem of `2 * growth_rate` channels; plain DenseNet keeps
    every channel (compression 1) and starts from 16 channels.
    """
    convs_per_layer = 2 if bottleneck else 1
    layers_per_block, remainder = divmod(depth - 4, 3 * convs_per_layer)
    if remainder or layers_per_block < 1:
        raise ValueError(
            f"`depth` minus 4 must be a positive multiple of {3 * convs_per_layer} for "
            f"bottleneck={bottleneck}. Received: depth={depth}"
        )
    return DenseNetSpec(
        name=name,
        blocks=(layers_per_block,) * 3,
        growth_rate=growth_rate,
        initial_features=2 * growth_rate if bottleneck else 16,
        bottleneck=bottleneck,
        compression=0.5 if bottleneck else 1.0,
        stem=CIFAR_STEM,
        default_size=32,
    )


_ALL_SPECS = (
    # ImageNet layout, Table 1 of the paper.
    imagenet_spec("densenet121", (6, 12, 24, 16)),
    imagenet_spec("densenet169", (6, 12, 32, 32)),
    imagenet_spec("densenet201", (6, 12, 48, 32)),
    # NOTE: these blocks count 265 layers, not 264. They are the paper's table and published weights.
    imagenet_spec("densenet264", (6, 12, 64, 48)),
    imagenet_spec("densenet161", (6, 12, 36, 24), growth_rate=48, initial_features=96),
    # CIFAR layout, Table 2 of the paper.
    cifar_spec("densenet40_k12", 40, 12, bottleneck=False),
    cifar_spec("densenet100_k12", 100, 12, bottleneck=False),
    cifar_spec("densenet100_k24", 100, 24, bottleneck=False),
    cifar_spec("densenet_bc100_k12", 100, 12, bottleneck=True),
    cifar_spec("densenet_bc250_k24", 250, 24, bottleneck=True),
    cifar_spec("densenet_bc190_k40", 190, 40, bottleneck=True),
    # Small DenseNet-BC networks that are not in the paper: the default of the end-to-end job on
    # 8x8 digits, and the network the tests train.
    cifar_spec("densenet_bc40_k12", 40, 12, bottleneck=True),
    cifar_spec("densenet_bc22_k8", 22, 8, bottleneck=True),
)

VARIANTS = {spec.name: spec for spec in _ALL_SPECS}


def get_spec(variant):
    """Return the `DenseNetSpec` named `variant`, or `variant` itself when it already is a spec.

    Raises:
        ValueError: if `variant` is not a name in `VARIANTS`.
    """
    if isinstance(variant, DenseNetSpec):
        return variant
    try:
        return VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown DenseNet variant. `variant` must be one of {sorted(VARIANTS)}. "
            f"Received: variant={variant!r}"
        ) from None
