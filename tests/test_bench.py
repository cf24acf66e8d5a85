"""bench/ab_speed.py end to end at the tiny shape (bench_speed.py runs inside the GPU check's dry run)."""

import re
import subprocess
import sys

from harness import ROOT, environment


def test_the_training_ab_times_ours_with_and_without_the_mask_and_marian_and_prints_their_ratios():
    script = ROOT / "bench" / "ab_speed.py"
    result = subprocess.run(
        [sys.executable, str(script), "train", "--shape", "tiny", "--rounds", "4"],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rates = dict(re.findall(r"^  (ours, every position|ours, labelled only|marian): ([\d,]+)$", result.stdout, re.M))
    assert set(rates) == {"ours, every position", "ours, labelled only", "marian"}
    assert all(int(rate.replace(",", "")) > 0 for rate in rates.values())
    ratios = re.findall(r"^  (.+ / .+): (\d+\.\d+)x \((\d+\.\d+)-(\d+\.\d+)x\)$", result.stdout, re.M)
    assert [name for name, *_ in ratios] == [
        "labelled only / every position",
        "labelled only / marian",
        "every position / marian",
    ]
    for _, median, low, high in ratios:
        assert float(low) <= float(median) <= float(high)
