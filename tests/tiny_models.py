"""Model shapes small enough for a test to build, run and train in seconds."""

from configuration_vanilla import VanillaConfig


def tiny_config(**overrides) -> VanillaConfig:
    """A two-layer encoder and three-layer decoder of width 16 over a vocabulary of 40."""
    values = dict(
        vocab_size=40,
        d_model=16,
        num_heads=4,
        d_ff=32,
        encoder_layers=2,
        decoder_layers=3,
        max_position_embeddings=64,
        dropout=0.0,
    )
    values.update(overrides)
    return VanillaConfig(**values)
