"""Draws the post's figures from the project's own code.

python docs/make_figures.py                                  # positions and learning-rate figures
python docs/make_figures.py --model demo-output              # also the demo model's cross-attention heatmap
python docs/make_figures.py --run runs/multi30k_de_en_cpu    # also a run's learning curve
python docs/make_figures.py --model M --sentence S --figure F  # the heatmap of any model and sentence
make docs-figures                                            # all of the post's figures
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import get_inverse_sqrt_schedule  # noqa: E402

from modeling_vanilla import sinusoidal_positions  # noqa: E402
from vanilla_files import complete_checkpoints, trainer_state, write_file_atomically  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"


def save(fig, name: str) -> Path:
    """Writes the figure atomically (vanilla_files.write_file_atomically)."""
    path = FIGURES / name
    write_file_atomically(path, lambda temporary: fig.savefig(temporary, dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def positional_encoding_figure() -> Path:
    """Sec. 3.5: the sinusoid table, and four of its dimensions along the positions."""
    table = sinusoidal_positions(torch.arange(100), 128)
    fig, (heat, curves) = plt.subplots(1, 2, figsize=(12, 4))
    image = heat.imshow(table.T, aspect="auto", cmap="RdBu", origin="lower")
    heat.set(xlabel="position", ylabel="dimension", title="PE(pos, i), d_model = 128")
    fig.colorbar(image, ax=heat)
    for dim in (0, 1, 20, 60):
        curves.plot(table[:, dim], label=f"dimension {dim}")
    curves.set(xlabel="position", title="Each dimension is a sinusoid of its own wavelength")
    curves.legend()
    return save(fig, "positional_encoding.png")


def learning_rate_figure(d_model: int = 512, warmup: int = 4000, steps: int = 20000) -> Path:
    """Sec. 5.3, eq. (3), beside transformers' inverse-square-root schedule as train.py sets it."""
    paper = [d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) for s in range(1, steps)]
    peak = (d_model * warmup) ** -0.5
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=peak)
    schedule = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup)
    trainer = []
    for _ in range(1, steps):
        optimizer.step()
        schedule.step()
        trainer.append(optimizer.param_groups[0]["lr"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(paper, label="paper, eq. (3)", linewidth=3, alpha=0.5)
    ax.plot(trainer, "--", label="transformers inverse_sqrt, lr = (d_model * warmup)^-0.5")
    ax.set(xlabel="training step", ylabel="learning rate", title=f"d_model = {d_model}, warmup = {warmup}")
    ax.legend()
    return save(fig, "learning_rate.png")


def learning_curve_figure(run: Path) -> Path:
    """Training loss per logging step and validation loss per epoch, from the run's last trainer_state.json."""
    checkpoints = complete_checkpoints(run)
    if not checkpoints:
        raise SystemExit(f"error: {run} has no complete checkpoint-* folders")
    history = trainer_state(checkpoints[-1])["log_history"]
    train = [(row["epoch"], row["loss"]) for row in history if "loss" in row]
    validation = [(row["epoch"], row["eval_loss"]) for row in history if "eval_loss" in row]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train, strict=True), label="training loss (label-smoothed)", alpha=0.7)
    ax.plot(*zip(*validation, strict=True), "o-", label="validation loss (label-smoothed)")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title=f"learning curve: {run.name}")
    ax.legend()
    return save(fig, f"learning_curve_{run.name}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained model folder, for the cross-attention heatmap")
    parser.add_argument("--run", type=Path, help="a train.py output folder with checkpoints, for its learning curve")
    parser.add_argument("--sentence", default="three hundred and forty-two", help="source sentence to plot")
    parser.add_argument("--figure", default=str(FIGURES / "cross_attention.png"), help="where the heatmap goes")
    args = parser.parse_args()
    print(positional_encoding_figure())
    print(learning_rate_figure())
    if args.run:
        print(learning_curve_figure(args.run))
    if args.model:
        from eval import EvalArguments
        from vanilla_plots import plot_cross_attention

        plot = EvalArguments(model=args.model, plot_attention=args.sentence, attention_file=args.figure)
        plot_cross_attention(plot, max_source_length=128)


if __name__ == "__main__":
    main()
