"""NannyML's CBPE on the windows bench/estimate.py wrote: run with NannyML's own environment.

    /work/bench-venv/bin/python bench/nannyml_cbpe.py windows.npz out.json

Reads the reference's probabilities and labels and every window's probabilities (one
window after the other, ``window`` sizes in order), fits ``nannyml.CBPE`` (binary
classification, metric accuracy, isotonic calibration: NannyML's defaults) on the reference
and estimates each window as one chunk. Writes ``{"estimated": [...], "version": ...}``.
Imports nothing of the project: NannyML is not one of its dependencies.
"""

from __future__ import annotations

import json
import sys
import warnings


def main(path: str, out: str) -> int:
    import nannyml
    import numpy as np
    import pandas as pd

    warnings.simplefilter("ignore")
    data = np.load(path, allow_pickle=False)
    classes = [str(c) for c in data["classes"]]
    if len(classes) != 2:
        raise SystemExit(f"expected a two-class model, got {classes}")

    def frame(probs, labels=None):
        df = pd.DataFrame({"proba": probs[:, 1].astype(float),
                           "pred": probs.argmax(1).astype(int)})
        if labels is not None:
            df["truth"] = [classes.index(str(t)) for t in labels]
        return df

    sizes = [int(n) for n in data["window_sizes"]]
    if len(set(sizes)) != 1:
        raise SystemExit("every window must have the same size (one NannyML chunk each)")
    estimator = nannyml.CBPE(problem_type="classification_binary", y_pred_proba="proba",
                             y_pred="pred", y_true="truth", metrics=["accuracy"],
                             chunk_size=sizes[0])
    estimator.fit(frame(data["ref_probs"], data["ref_labels"]))
    result = estimator.estimate(frame(data["window_probs"])).filter(period="analysis")
    values = result.to_df()[("accuracy", "value")].astype(float).tolist()
    if len(values) != len(sizes):
        raise SystemExit(f"NannyML made {len(values)} chunks of {len(sizes)} windows")
    with open(out, "w") as f:
        json.dump({"estimated": values, "version": nannyml.__version__,
                   "needs_calibration": bool(estimator.needs_calibration)}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
