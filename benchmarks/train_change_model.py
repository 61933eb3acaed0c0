"""Train the learned change detector (mstoolkit.longitudinal.learned) and write the shipped weights.

Data: phantom pairs only. Training: seeds 9000-9011 (every scanner profile, 3 mm slices on every
third, a different follow-up profile on every other). Selection of the checkpoint and of the
threshold: the phantom selection pairs 8000-8005 that chose the statistical map's settings
(benchmarks/bench_longitudinal.py --select). Nothing real is used: the open_ms_data pairs are
scored afterwards by ``python benchmarks/bench_longitudinal.py --method learned``.

The prepared pairs are cached in build/change_training/ (the registration and N4 of 18 pairs
take most of the time), so a second run only trains.

Run: python benchmarks/train_change_model.py [--iterations 800] [--threads 2] [--out PATH]
Writes the checkpoint (default: mstoolkit/longitudinal/reference/growth_model.pt) and
build/benchmarks/change_model_training.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import ROOT, limit_threads, write_json

CACHE = ROOT / "build" / "change_training"


def training_pair(seed: int):
    """One phantom pair as the network learns from it: inputs, growth truth (both on the follow-up grid), a description.

    The seed sets the scanner profile (cycling through all four), whether the slices are 3 mm
    thick (every third seed, like a 2D FLAIR), and whether the follow-up comes from another
    scanner profile (every other seed): the protocol changes a real follow-up brings.
    """
    from mstoolkit.longitudinal.change import detect_changes, robust_zscore
    from mstoolkit.longitudinal.learned import PROFILES, network_inputs
    from mstoolkit.phantom.generator import generate_longitudinal_pair
    from mstoolkit.preprocessing.registration import resample_to_reference

    profile = PROFILES[seed % len(PROFILES)]
    followup_profile = PROFILES[(seed // 2) % len(PROFILES)] if seed % 2 else profile
    spacing = (1.0, 1.0, 3.0) if seed % 3 == 0 else None
    baseline, followup, growth = generate_longitudinal_pair(seed=seed, profile=profile, spacing=spacing,
                                                            followup_profile=followup_profile)
    result = detect_changes(baseline.images["FLAIR"], baseline.affine, followup.images["FLAIR"], followup.affine,
                            skull_stripped=True)
    # The phantom's truth is new and enlarged tissue on the baseline grid: carry it onto the follow-up's.
    truth = resample_to_reference(growth, baseline.affine, followup.shape, followup.affine,
                                  transform=result.transform, is_mask=True)
    truth = ((truth > 0) & (result.brain > 0)).astype(np.uint8)
    inputs = network_inputs(robust_zscore(result.baseline_registered, result.brain),
                            robust_zscore(result.followup_corrected, result.brain), result.change_z, result.brain)
    about = {"seed": seed, "profile": profile, "followup_profile": followup_profile, "spacing": spacing,
             "growth_voxels": int(truth.sum())}
    return inputs, truth, about


def _cached_training_pair(seed: int):
    path = CACHE / f"pair_{seed}.npz"
    if path.exists():
        data = np.load(path, allow_pickle=False)
        about = {k: data[f"about_{k}"].item() for k in ("seed", "profile", "followup_profile", "growth_voxels")}
        about["spacing"] = None if not data["about_spacing"].size else tuple(float(s) for s in data["about_spacing"])
        return data["inputs"].astype(np.float32), data["truth"], about
    inputs, truth, about = training_pair(seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, inputs=inputs.astype(np.float16), truth=truth,
                        **{f"about_{k}": np.asarray(v if v is not None else []) for k, v in about.items()})
    return inputs, truth, about


def _selection_pairs():
    """The statistical map's selection pairs, registered once: (result, baseline, followup, truth)."""
    from bench_longitudinal import SELECTION_SEEDS, _phantom_pair

    from mstoolkit.longitudinal.change import detect_changes

    prepared = []
    for seed in SELECTION_SEEDS:
        _, _, (baseline, followup, truth) = _phantom_pair(seed)
        result = detect_changes(baseline.images["FLAIR"], baseline.affine, followup.images["FLAIR"], followup.affine,
                                skull_stripped=True)
        prepared.append((result, baseline, followup, truth))
        print(f"selection pair {seed} ready", flush=True)
    return prepared


def selection_score(prepared):
    """score(network, threshold): mean lesion-wise change F1 and voxel Dice of the learned method on the selection pairs."""
    from bench_longitudinal import _score_phantom

    from mstoolkit.longitudinal.change import detect_changes

    def score(network, threshold: float) -> float:
        f1, dice = [], []
        for first, baseline, followup, truth in prepared:
            result = detect_changes(first.baseline_registered, followup.affine, first.followup_corrected, followup.affine,
                                    registered=True, skull_stripped=True, bias_correct=False, method="learned",
                                    change_network=(network, {"threshold": threshold}))
            result.transform = first.transform
            scores = _score_phantom(result, baseline, followup, truth)
            f1.append(scores["f1"])
            dice.append(scores["dice"])
        return float(np.mean(f1)), float(np.mean(dice))

    return score


def main() -> None:
    from mstoolkit.longitudinal.learned import MODEL_PATH, TRAINING_SEEDS, train_change_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(MODEL_PATH))
    args = parser.parse_args()
    limit_threads(args.threads, torch=True, simpleitk=True)
    started = time.perf_counter()
    pairs = []
    for seed in TRAINING_SEEDS:
        pairs.append(_cached_training_pair(seed))
        print(f"training pair {seed}: {pairs[-1][2]}", flush=True)
    prepare_seconds = time.perf_counter() - started
    score = selection_score(_selection_pairs())
    record = train_change_model(pairs, args.out, score=score, iterations=args.iterations,
                                log=lambda line: print(line, flush=True))
    write_json("change_model_training", {"prepare_seconds": round(prepare_seconds, 1), "threads": args.threads,
                                         "out": str(Path(args.out)), **record})


if __name__ == "__main__":
    main()
