"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017) as Hugging Face models.

Read top to bottom in the paper's order: positions (sec. 3.5), attention (sec. 3.2), feed-forward (sec. 3.3),
encoder and decoder layers and stacks (sec. 3.1), then the models users load.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache, StaticLayer
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack  # typing.Unpack from Python 3.11, typing_extensions before
from transformers.utils import TransformersKwargs, auto_docstring, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

try:
    from .configuration_vanilla import VanillaConfig
except ImportError:
    from configuration_vanilla import VanillaConfig

# transformers renamed the decoder cache from `past_key_values` to `cache` (5.2x), in its outputs and arguments, and
# deprecates the old argument name. Before the rename generate() passes `past_key_values`, the current name there:
# it is taken as `cache` without a warning (a deprecation due in version "0" is past, so deprecate_kwarg is silent).
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
renamed_cache_argument = deprecate_kwarg(
    "past_key_values", "5.40.0" if CACHE_FIELD == "cache" else "0", new_name="cache"
)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: the outputs "shifted right by one position" (sec. 3.1), -100 read as padding."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sec. 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))."""
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    angles = positions.float()[..., None] * inv_freq  # (..., d_model / 2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., :d_model]


class VanillaPositionalEncoding(nn.Module):
    """Sec. 3.5: sinusoids computed for any position, or learned embeddings up to max_position_embeddings."""

    def __init__(self, config: VanillaConfig):
        super().__init__()
        self.d_model = config.d_model
        self.max_positions = config.max_position_embeddings
        self.learned = config.position_embedding_type == "learned"
        if self.learned:
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)

    def forward(
        self, seq_len: int, offset: int | torch.Tensor, device: torch.device, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        # A static cache counts its tokens in a tensor: added to a range of static length, that count keeps the
        # compiled decoding step one graph (a range ending at the count would have a data-dependent size).
        positions = torch.arange(seq_len, device=device) + offset
        if padding is not None:  # (batch, 1) pads on the left: each row counts from its first token
            positions = (positions - padding).clamp(min=0)
        if not self.learned:
            return sinusoidal_positions(positions, self.d_model)
        if isinstance(offset, int):
            self.check_length(offset + seq_len, "sequence length")
        return self.embed_positions(positions)

    def check_length(self, length: int, what: str):
        """Learned embeddings end at max_position_embeddings; sinusoids go on."""
        if self.learned and length > self.max_positions:
            raise ValueError(
                f"{what} ({length}) exceeds max_position_embeddings ({self.max_positions}) "
                "of the learned position embeddings"
            )


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, eq. (1): softmax(QK^T / sqrt(d_k)) V."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q_len, k_len)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (batch, q_len, heads, d_k)
    return output, weights


class VanillaAttention(nn.Module):
    """Multi-head attention, sec. 3.2.2: Concat(head_1..head_h) W^O, head_i = Attention(QW_i^Q, KW_i^K, VW_i^V)."""

    def __init__(self, config: VanillaConfig, layer_idx: int | None = None, is_causal=False, is_cross=False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        self.is_cross = is_cross
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        # The h heads' projections are one matrix each; self-attention fuses Q, K and V into one.
        if is_cross:
            self.q_proj = nn.Linear(config.d_model, config.d_model)
            self.kv_proj = nn.Linear(config.d_model, 2 * config.d_model)
        else:
            self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)  # (batch, heads, len, d_k)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.is_cross:
            query = self._heads(self.q_proj(hidden_states))
            # Encoder-decoder attention: keys and values come from the encoder output, computed once per source.
            if cache is not None and cache.is_updated.get(self.layer_idx):
                layer = cache.cross_attention_cache.layers[self.layer_idx]
                key, value = layer.keys, layer.values
            else:
                key, value = map(self._heads, self.kv_proj(key_value_states).chunk(2, dim=-1))
                if cache is not None:
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            query, key, value = map(self._heads, self.qkv_proj(hidden_states).chunk(3, dim=-1))
            if cache is not None:
                key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = self.out_proj(output.reshape(*hidden_states.shape[:-1], -1))
        return output, weights


class VanillaFeedForward(nn.Module):
    """Position-wise feed-forward network, eq. (2): FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, config: VanillaConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.activation = ACT2FN[config.activation_function]
        self.fc2 = nn.Linear(config.d_ff, config.d_model)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class VanillaSublayer(nn.Module):
    """Sec. 3.1 and 5.4: LayerNorm(x + Dropout(Sublayer(x))); pre-LN computes x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(self, config: VanillaConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # `sublayer` is a function, never a module: accelerate's hooks (device_map, offloading) move a call's arguments
        # to the execution device with .to(), which would move a module's weights, and fails on offloaded ones.
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class VanillaEncoderLayer(GradientCheckpointingLayer):
    """Sec. 3.1: multi-head self-attention, then the feed-forward network, each a residual sub-layer."""

    def __init__(self, config: VanillaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaAttention(config, layer_idx)
        self.self_attn_sublayer = VanillaSublayer(config)
        self.feed_forward = VanillaFeedForward(config)
        self.feed_forward_sublayer = VanillaSublayer(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        hidden_states = self.self_attn_sublayer(
            hidden_states, lambda x: self.self_attn(x, attention_mask=attention_mask, **kwargs)[0]
        )
        return self.feed_forward_sublayer(hidden_states, lambda x: self.feed_forward(x))


class VanillaDecoderLayer(GradientCheckpointingLayer):
    """Sec. 3.1: masked self-attention, encoder-decoder attention, then the feed-forward network."""

    def __init__(self, config: VanillaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaAttention(config, layer_idx, is_causal=True)
        self.self_attn_sublayer = VanillaSublayer(config)
        self.cross_attn = VanillaAttention(config, layer_idx, is_cross=True)
        self.cross_attn_sublayer = VanillaSublayer(config)
        self.feed_forward = VanillaFeedForward(config)
        self.feed_forward_sublayer = VanillaSublayer(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden_states = self.self_attn_sublayer(
            hidden_states, lambda x: self.self_attn(x, attention_mask=attention_mask, cache=cache, **kwargs)[0]
        )
        hidden_states = self.cross_attn_sublayer(
            hidden_states,
            lambda x: self.cross_attn(
                x, encoder_hidden_states, attention_mask=encoder_attention_mask, cache=cache, **kwargs
            )[0],
        )
        return self.feed_forward_sublayer(hidden_states, lambda x: self.feed_forward(x))


class VanillaPreTrainedModel(PreTrainedModel):
    """Weights initialised as in common implementations of the paper (tensor2tensor, fairseq)."""

    config_class = VanillaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VanillaEncoderLayer", "VanillaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def __init__(self, config: VanillaConfig, *inputs, **kwargs):
        config.check()  # transformers sets from_pretrained's overrides after the config's own checks ran
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Xavier-uniform projections and zero biases (keeps activations' variance through depth, Glorot & Bengio
        2010); embeddings N(0, d_model^-0.5), so that after the sqrt(d_model) scaling of sec. 3.4 they have unit
        variance and, shared with the pre-softmax projection, give logits of unit scale."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.d_model**-0.5)
            if module.padding_idx is not None:
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True) -> nn.Embedding:
        """Untied, the decoder's input embedding is a third matrix over the same vocabulary: resized with the two
        that transformers resizes (the encoder's input embedding and the pre-softmax projection)."""
        embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        decoder = self.get_decoder()
        if not self.config.tie_word_embeddings and decoder.embed_tokens is not embeddings:
            decoder.embed_tokens = self._get_resized_embeddings(
                decoder.embed_tokens, embeddings.num_embeddings, mean_resizing=mean_resizing
            )
        return embeddings


def _embedding(config: VanillaConfig) -> nn.Embedding:
    return nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)


class VanillaStack(VanillaPreTrainedModel):
    """Sec. 3.1: N identical layers over scaled token embeddings plus positions; the encoder and the decoder are two."""

    def __init__(self, config: VanillaConfig, layer_class: type[GradientCheckpointingLayer], num_layers: int):
        super().__init__(config)
        self.embed_tokens = _embedding(config)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = VanillaPositionalEncoding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(layer_class(config, i) for i in range(num_layers))
        # Pre-LN leaves the last residual stream un-normalised; a final LayerNorm restores it.
        self.final_norm = nn.LayerNorm(config.d_model) if config.norm_first else None
        self.post_init()

    def embed(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        past_length: int | torch.Tensor,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sec. 3.4, 3.5, 5.4: Dropout(token embedding * sqrt(d_model) + positions), counted from past_length (and
        from each row's first token, past `padding` pads on the left)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"pass exactly one of input_ids or inputs_embeds to {type(self).__name__}")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        inputs_embeds = inputs_embeds * self.embed_scale
        positions = self.embed_positions(inputs_embeds.shape[1], past_length, inputs_embeds.device, padding)
        return self.dropout(inputs_embeds + positions.to(inputs_embeds.dtype))

    def normalize(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.final_norm is None else self.final_norm(hidden_states)


def left_padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The pads before each row's first token, (batch, 1), from a 2-D mask: they are no positions of the sentence."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    return (attention_mask.cumsum(-1) == 0).sum(-1, keepdim=True)


def layer_outputs(layer_class: type[GradientCheckpointingLayer], num_layers_key: str) -> OutputRecorder:
    """A stack's layer outputs as its `hidden_states`, negative `output_hidden_states` indices counted in its layers."""
    # config.num_hidden_layers names the decoder's layers, the count transformers' caches take; an encoder of another
    # depth says its own. Releases before the recorder's `num_hidden_layers_key` (5.2x) select no negative index.
    if "num_hidden_layers_key" in OutputRecorder.__dataclass_fields__:
        return OutputRecorder(layer_class, num_hidden_layers_key=num_layers_key)
    return OutputRecorder(layer_class)


class VanillaEncoder(VanillaStack):
    """Sec. 3.1: a stack of N identical encoder layers; every position attends to all positions of the source."""

    _can_record_outputs = {
        "hidden_states": layer_outputs(VanillaEncoderLayer, "encoder_layers"),
        "attentions": VanillaAttention,
    }

    def __init__(self, config: VanillaConfig):
        super().__init__(config, VanillaEncoderLayer, config.encoder_layers)

    @merge_with_config_defaults
    @capture_outputs
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        for name in ("use_cache", "cache", "past_key_values"):  # the encoder keeps no cache (generate() may pass the
            kwargs.pop(name, None)  # decoder's, and the config's use_cache is merged in)
        hidden_states = self.embed(input_ids, inputs_embeds, 0, left_padding(attention_mask))
        # The masks take only the batch size, length, dtype and device of the embeddings they are given.
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self.normalize(hidden_states))


class VanillaDecoder(VanillaStack):
    """Sec. 3.1: a stack of N decoder layers; position i attends only to positions up to i (masked self-attention)."""

    _can_record_outputs = {
        "hidden_states": layer_outputs(VanillaDecoderLayer, "decoder_layers"),
        "attentions": OutputRecorder(VanillaAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VanillaAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: VanillaConfig):
        super().__init__(config, VanillaDecoderLayer, config.decoder_layers)

    @merge_with_config_defaults
    @capture_outputs
    @auto_docstring
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""
        cache (`~cache_utils.Cache`, *optional*):
            The attention keys and values of the positions decoded so far (`past_key_values` before transformers 5.2x).
        """
        if encoder_hidden_states is None:
            raise ValueError("the decoder needs encoder_hidden_states (the encoder's output)")
        if self.training and torch.is_grad_enabled() and any(layer.gradient_checkpointing for layer in self.layers):
            # A layer recomputed in the backward pass would extend the cache a second time: training under activation
            # checkpointing keeps none, as Marian's decoder (transformers before 5.2x hands a `cache` argument on to
            # the layers). Without gradients nothing is recomputed: generate() in training mode keeps its cache.
            use_cache, cache = False, None
        # use_cache=False (as with labels) starts no cache, but one passed in is attended to, as in Marian's decoder:
        # prefix tuning (peft) passes its learned keys and values as the cache of every training step.
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        elif cache is not None and not isinstance(cache, EncoderDecoderCache):  # a decoder-only cache: its self-
            cache = EncoderDecoderCache(cache, DynamicCache(config=self.config))  # attention's, and the cross's beside

        past_length = cache.get_seq_length() if cache is not None else 0
        hidden_states = self.embed(input_ids, inputs_embeds, past_length, left_padding(attention_mask))
        self_cache = cache.self_attention_cache if cache is not None else None
        causal_mask = create_causal_mask(self.config, hidden_states, attention_mask, self_cache)
        cross_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        # Early-exit drafting (generate(assistant_early_exit=k)) lowers config.decoder_layers for a while: the decoder
        # then runs its first k layers, as many as the cache that generate() sizes by the config holds.
        for layer in self.layers[: self.config.decoder_layers]:
            hidden_states = layer(hidden_states, causal_mask, encoder_hidden_states, cross_mask, cache=cache, **kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.normalize(hidden_states), **{CACHE_FIELD: cache}
        )


class VanillaModel(VanillaPreTrainedModel):
    """The encoder-decoder of Figure 1, without the final linear and softmax."""

    # Sec. 3.4: "we share the same weight matrix between the two embedding layers and the pre-softmax linear
    # transformation". transformers ties the encoder's and the decoder's embeddings to `shared` when
    # config.tie_word_embeddings (the default), and leaves them apart otherwise.
    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: VanillaConfig):
        super().__init__(config)
        # Untied, the encoder and the decoder each own their embedding matrix and none is shared: `shared` is None.
        self.shared = _embedding(config) if config.tie_word_embeddings else None
        self.encoder = VanillaEncoder(config)
        self.decoder = VanillaDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        # The module the encoder calls (tied, its weight is `shared`'s), so that hooks on it act (NEFTune), as Marian's.
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        if self.shared is None:
            self.encoder.embed_tokens = value
        else:
            self.shared = self.encoder.embed_tokens = self.decoder.embed_tokens = value

    @can_return_tuple
    @auto_docstring
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        r"""
        cache (`~cache_utils.Cache`, *optional*):
            The attention keys and values of the positions decoded so far (`past_key_values` before transformers 5.2x).
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "pass decoder_input_ids or decoder_inputs_embeds; VanillaForConditionalGeneration makes them of labels"
            )

        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{CACHE_FIELD: getattr(decoder_outputs, CACHE_FIELD)},
        )


class VanillaForConditionalGeneration(VanillaPreTrainedModel, GenerationMixin):
    """Figure 1 whole: the encoder-decoder, the pre-softmax linear layer, and the label-smoothed loss (sec. 5.4)."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: VanillaConfig):
        super().__init__(config)
        self.model = VanillaModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
        """Leaves the decoder's causal mask to the decoder: with a static cache, generate() would build it before each
        step, outside a compiled step's graph (transformers 5.2x); the decoder builds the same mask inside it."""
        return attention_mask

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
    ):
        """Refuses a static cache longer than learned positions reach, before decoding: its steps count positions in
        an unread tensor, so the lookup past the table would fail with an IndexError (a device assert on a GPU)."""
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
        )
        cache = model_kwargs.get(CACHE_FIELD, model_kwargs.get("past_key_values"))
        decoder_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        if decoder_cache is not None and decoder_cache.is_compileable:
            self.model.decoder.embed_positions.check_length(
                max_cache_length, "a static cache's decoder positions, max_length - 1,"
            )

    @staticmethod
    def _reorder_cache(cache: Cache, beam_idx: torch.Tensor) -> Cache:
        """Beam search: moves each hypothesis' self-attention keys/values to its new slot after a step.

        The cross-attention keys/values are left alone: generate() repeats every source sentence once per beam and
        beams only move within their sentence, so reordering them would copy identical rows (a gather per layer
        and step, paid by the default `EncoderDecoderCache.reorder_cache`).

        A static cache's buffers are reordered in place: they keep the addresses that a compiled decoding step (and
        the CUDA graphs it replays) was built on, and no check of their filled length reads the device each step."""
        decoder_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        for layer in decoder_cache.layers:
            if isinstance(layer, StaticLayer):
                if layer.is_initialized:
                    beam_idx = beam_idx.to(layer.keys.device)
                    layer.keys.copy_(layer.keys.index_select(0, beam_idx))
                    layer.values.copy_(layer.values.index_select(0, beam_idx))
            else:
                layer.reorder_cache(beam_idx)
        return cache

    @can_return_tuple
    @auto_docstring
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        cache (`~cache_utils.Cache`, *optional*):
            The attention keys and values of the positions decoded so far (`past_key_values` before transformers 5.2x).
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            Target token ids, -100 where ignored; the decoder inputs are these shifted right when not given.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            The count of non-ignored labels over all accumulated micro-batches (passed by Trainer): the loss is then
            summed over tokens and divided by it.
        logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
            The decoder positions to project onto the vocabulary, as in transformers' causal LMs: an int keeps the last
            that many (0: all), a 1-D tensor these positions, a `(batch_size, target_length)` integer tensor these
            positions of each row, and a boolean one its `True` positions, flattened to `(num_true, vocab_size)`. The
            loss is taken over the kept positions. A training step needs only the positions that have a label
            (`labels != -100`): VanillaTrainer passes that mask, which spares the output layer the padding.
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = kept_positions(outputs.last_hidden_state, logits_to_keep)  # all: (batch, tgt_len, d_model)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            labels = kept_positions(labels[..., None], logits_to_keep)[..., 0]
            loss = label_smoothed_cross_entropy(logits, labels, self.config.label_smoothing, num_items_in_batch)

        # The encoder-decoder's other outputs (cache, hidden states, attentions) pass on under the same names.
        passed_on = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return Seq2SeqLMOutput(loss=loss, logits=logits, **passed_on)


def kept_positions(states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions of (batch, tgt_len, ...) decoder states that `logits_to_keep` names (see the model's forward)."""
    if isinstance(logits_to_keep, int):
        return states[:, -logits_to_keep:] if logits_to_keep else states
    if logits_to_keep.dtype == torch.bool:
        return states[logits_to_keep]
    if logits_to_keep.ndim == 2:
        return torch.take_along_dim(states, logits_to_keep[..., None], dim=1)
    return states[:, logits_to_keep]


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sec. 5.4: cross-entropy against (1 - eps) * one_hot + eps / vocab, over the positions whose label is not -100."""
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.to(logits.device).reshape(-1),
        ignore_index=-100,
        label_smoothing=epsilon,
        reduction=reduction,
    )
    if num_items_in_batch is not None:
        loss = loss / num_items_in_batch
    return loss


if not __name__.startswith("transformers_modules."):  # as remote code each repo's own files serve its models
    AutoConfig.register("vanilla", VanillaConfig, exist_ok=True)
    AutoModel.register(VanillaConfig, VanillaModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(VanillaConfig, VanillaForConditionalGeneration, exist_ok=True)
