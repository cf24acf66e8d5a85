"""Configuration of the original encoder-decoder Transformer (Vaswani et al. 2017)."""

from typing import TYPE_CHECKING

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

if TYPE_CHECKING:
    # transformers takes a code file's relative imports for the files that go with it: saving a config copies, and
    # loading one as remote code fetches, modeling_vanilla.py beside it (before a save_pretrained(push_to_hub=True)
    # uploads), so the models of its auto_map build from any folder that holds it.
    from .modeling_vanilla import VanillaForConditionalGeneration  # noqa: F401

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned")
# The special tokens of the shared source/target vocabulary (sec. 5.1), in id order: every tokenizer train.py builds
# puts them first, and VanillaConfig's pad/bos/eos ids (the decoder starts from <s>) point at them.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID, UNK_TOKEN_ID = range(len(SPECIAL_TOKENS))

# Named model shapes, as fairseq names its architectures: base and big are Table 3's; tiny and small are for CPUs and
# small corpora. Each holds what differs from VanillaConfig's defaults (the base model) or what defines the shape.
PRESETS = {
    "tiny": dict(d_model=64, num_heads=4, d_ff=256, encoder_layers=2, decoder_layers=2),
    "small": dict(d_model=256, num_heads=4, d_ff=1024, encoder_layers=3, decoder_layers=3),
    "base": dict(d_model=512, num_heads=8, d_ff=2048, encoder_layers=6, decoder_layers=6, dropout=0.1),
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, encoder_layers=6, decoder_layers=6, dropout=0.3),
}

# The classes each Auto class loads from a saved folder with trust_remote_code=True; every saved config.json names
# them, and the folder holds both files.
AUTO_MAP = {
    "AutoConfig": "configuration_vanilla.VanillaConfig",
    "AutoModel": "modeling_vanilla.VanillaModel",
    "AutoModelForSeq2SeqLM": "modeling_vanilla.VanillaForConditionalGeneration",
}


def _is_integer(value) -> bool:
    """An int, and not a bool (True is an int to Python, but not a size or a token id)."""
    return isinstance(value, int) and not isinstance(value, bool)


class VanillaConfig(PretrainedConfig):
    """The hyper-parameters of the Transformer; the defaults are the paper's base model (Table 3).

    Args:
        vocab_size: size of the (shared source/target) vocabulary; 37,000 is the paper's En-De BPE.
        d_model: width of every sub-layer output and of the embeddings (sec. 3.1).
        num_heads: parallel attention heads h; d_k = d_v = d_model / h (sec. 3.2.2).
        d_ff: inner width of the position-wise feed-forward networks (sec. 3.3).
        encoder_layers: N, the number of encoder layers (sec. 3.1).
        decoder_layers: N, the number of decoder layers (sec. 3.1).
        dropout: P_drop on sub-layer outputs and on the embedding sums (sec. 5.4).
        attention_dropout: dropout on the attention weights (not in the paper; 0 keeps it out).
        activation_function: the feed-forward non-linearity; the paper's is ReLU (eq. 2).
        label_smoothing: epsilon_ls of the training loss (sec. 5.4).
        scale_embedding: multiply embeddings by sqrt(d_model) (sec. 3.4).
        position_embedding_type: "sinusoidal" (sec. 3.5) or "learned" (the variant of Table 3, row E).
        max_position_embeddings: longest sequence for learned positions; sinusoids have no limit.
        norm_first: False is the paper's post-LN, LayerNorm(x + Sublayer(x)); True is pre-LN.
        tie_word_embeddings: one matrix for encoder input, decoder input and pre-softmax projection (sec. 3.4).
    """

    model_type = "vanilla"
    _auto_class = "AutoConfig"  # saving copies this file beside config.json
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "decoder_layers",
        "intermediate_size": "d_ff",
    }

    def __init__(
        self,
        vocab_size: int = 37000,
        d_model: int = 512,
        num_heads: int = 8,
        d_ff: int = 2048,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_function: str = "relu",
        label_smoothing: float = 0.1,
        scale_embedding: bool = True,
        position_embedding_type: str = "sinusoidal",
        max_position_embeddings: int = 1024,
        norm_first: bool = False,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int = PAD_TOKEN_ID,
        bos_token_id: int = BOS_TOKEN_ID,
        eos_token_id: int = EOS_TOKEN_ID,
        decoder_start_token_id: int = BOS_TOKEN_ID,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_ff = d_ff
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_function = activation_function
        self.label_smoothing = label_smoothing
        self.scale_embedding = scale_embedding
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        self.norm_first = norm_first
        self.use_cache = use_cache
        kwargs["is_encoder_decoder"] = True
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.check()

    def check(self) -> None:
        """ValueError for a field out of its range. Also run by the model: transformers sets the overrides of
        from_pretrained (and the aliases of attribute_map) after __init__."""
        for name, value in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("num_heads", self.num_heads),
            ("d_ff", self.d_ff),
            ("encoder_layers", self.encoder_layers),
            ("decoder_layers", self.decoder_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ]:
            if not _is_integer(value) or value <= 0:
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        for name, value in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("label_smoothing", self.label_smoothing),
        ]:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} ({value!r}) must be a number in [0, 1)")
        for name, value in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ]:
            # None, as in PretrainedConfig, leaves the token out; transformers also allows a list of eos ids.
            ids = value if name == "eos_token_id" and isinstance(value, list) else [value]
            if value is not None and not all(_is_integer(i) and 0 <= i < self.vocab_size for i in ids):
                raise ValueError(f"{name} ({value!r}) must be a token id in [0, vocab_size ({self.vocab_size}))")
        for name, value in [("scale_embedding", self.scale_embedding), ("norm_first", self.norm_first)]:
            if not isinstance(value, bool):
                raise ValueError(f"{name} ({value!r}) must be True or False")
        if self.activation_function not in ACT2FN:
            raise ValueError(f"activation_function ({self.activation_function!r}) must be one of {sorted(ACT2FN)}")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type ({self.position_embedding_type!r}) must be one of {POSITION_EMBEDDING_TYPES}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VanillaConfig":
        """The shape PRESETS[name] names, with `overrides` (any other field, or a field of the preset) on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
