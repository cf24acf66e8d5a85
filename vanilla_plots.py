"""eval.py --plot_attention: heatmaps of the encoder-decoder attention while translating one sentence."""

from pathlib import Path
from typing import TYPE_CHECKING

from vanilla_files import check_output_files, check_writable, output_label, output_path, write_file_atomically
from vanilla_translation import (
    encode,
    generation_arguments,
    load_model_and_tokenizer,
    position_limit,
    take_decoding_defaults,
)

if TYPE_CHECKING:
    from eval import EvalArguments


def plot_cross_attention(args: "EvalArguments", max_source_length: int) -> Path:
    """Heatmaps of the last decoder layer's encoder-decoder attention (sec. 3.2.3) while translating one sentence:
    one per head and their mean; rows are the output tokens, columns the source tokens."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = output_path(args.attention_file, args.model, "attention.png")
    label = output_label("--attention_file", args.attention_file)
    check_writable(path, label)
    check_output_files({label: path}, {})
    # Only the eager implementation returns attention weights.
    model, tokenizer = load_model_and_tokenizer(args.model, attn_implementation="eager", dtype=args.dtype)
    take_decoding_defaults(args, model.generation_config)
    positions = position_limit(model)
    source_ids = torch.tensor(
        encode(tokenizer, [args.plot_attention], max_source_length, positions), device=model.device
    )
    with torch.no_grad():
        settings = generation_arguments(args, source_ids.shape[1], positions)
        output_ids = model.generate(input_ids=source_ids, **settings)
        # Teacher-force the translation: decoder step i reads output token i and attends while predicting i + 1.
        outputs = model(input_ids=source_ids, decoder_input_ids=output_ids[:, :-1], output_attentions=True)
    weights = outputs.cross_attentions[-1][0].float().cpu()  # (heads, output_len, source_len)
    panels = [(f"head {head + 1}", weights[head]) for head in range(weights.shape[0])]
    panels.append(("mean of heads", weights.mean(dim=0)))

    source_tokens = tokenizer.convert_ids_to_tokens(source_ids[0].tolist())
    output_tokens = tokenizer.convert_ids_to_tokens(output_ids[0, 1:].tolist())
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    cell = 0.35
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(columns * (1.5 + cell * len(source_tokens)), rows * (1.5 + cell * len(output_tokens))),
        squeeze=False,
    )
    for axis, (title, panel) in zip(axes.flat, panels, strict=False):
        axis.imshow(panel.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_title(title)
        # The user's text is text: matplotlib would read what lies between two "$" as TeX math.
        axis.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=8, parse_math=False)
        axis.set_yticks(range(len(output_tokens)), output_tokens, fontsize=8, parse_math=False)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    translation = tokenizer.decode(output_ids[0], skip_special_tokens=True)
    figure.suptitle(f"cross-attention, last layer: {args.plot_attention!r} -> {translation!r}", parse_math=False)
    figure.tight_layout()

    try:
        write_file_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    finally:
        plt.close(figure)
    print(f"{args.plot_attention} -> {translation}\nattention plot: {path}")
    return path
