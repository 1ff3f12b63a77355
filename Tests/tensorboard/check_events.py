#!/usr/bin/env python3
"""Checks a run's TensorBoard event files against its metrics.jsonl, reading them with TensorBoard's own reader.

Usage: check_events.py RUN_DIR [--histogram TAG=NUM ...]   (normally through check-events.sh)

Contract:
- The event files in RUN_DIR are loaded with tensorboard's EventAccumulator, keeping every scalar and histogram.
- RUN_DIR/metrics.jsonl holds one flat JSON object per line, {"step": S, "<tag>": number, ...}. For every line
  and every key other than "step" and "epoch", a scalar with that tag must exist at step S whose value equals
  float32(number) (event scalars are float32; NaN matches NaN). Conversely every scalar event (tag, step) must
  come from such a line: no extra tags, no extra steps.
- --histogram TAG=NUM: the histogram TAG must exist at every logged step (the steps of metrics lines that
  contain "loss"), each with num == NUM, sum(bucket) == num, len(bucket) == len(bucket_limit), min <= max.
Prints "checked N scalars over K tags and M histograms" and exits 0; otherwise prints one line
"check_events: <reason>" to stderr and exits 1 (2 for bad usage).
"""
import argparse
import json
import logging
import math
import os
import sys
import warnings


def fail(reason):
    print(f"check_events: {reason}", file=sys.stderr)
    sys.exit(1)


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_histogram_option(text):
    tag, sep, num = text.rpartition("=")
    if not sep or not tag:
        raise argparse.ArgumentTypeError(f"expected TAG=NUM, got {text!r}")
    try:
        value = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"NUM in {text!r} is not a number")
    return tag, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--histogram", action="append", default=[], type=parse_histogram_option,
                        metavar="TAG=NUM", help="a histogram that must exist at every logged step with num == NUM")
    args = parser.parse_args()

    # TensorBoard logs "TensorFlow installation not found" and the like: quiet unless something fails.
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    from tensorboard.backend.event_processing import event_accumulator as ea

    run_dir = args.run_dir
    if not os.path.isdir(run_dir):
        fail(f"{run_dir} is not a directory")
    if not any("tfevents" in name for name in os.listdir(run_dir)):
        fail(f"no event files (events.out.tfevents.*) in {run_dir}")
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        fail(f"{metrics_path} is missing")

    # expected[(tag, step)] = list of float32 values from metrics lines; logged_steps: steps with "loss".
    expected = {}
    logged_steps = set()
    with open(metrics_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{metrics_path}:{number}: not JSON ({e.msg})")
            if not isinstance(record, dict):
                fail(f"{metrics_path}:{number}: not a JSON object")
            step = record.get("step")
            if not is_number(step) or step != int(step):
                fail(f"{metrics_path}:{number}: no integer \"step\"")
            step = int(step)
            if "loss" in record:
                logged_steps.add(step)
            for key, value in record.items():
                if key in ("step", "epoch"):
                    continue
                if not is_number(value):
                    fail(f"{metrics_path}:{number}: \"{key}\" is not a number ({value!r})")
                with np.errstate(over="ignore"):
                    expected.setdefault((key, step), []).append(np.float32(value))

    accumulator = ea.EventAccumulator(run_dir, size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
    try:
        accumulator.Reload()
    except Exception as e:  # a corrupt file: TensorBoard's reader raises
        fail(f"TensorBoard could not read the event files in {run_dir}: {type(e).__name__}: {e}")
    tags = accumulator.Tags()

    def same(a, b):
        return a == b or (math.isnan(a) and math.isnan(b))

    # Events → metrics: every scalar event must match a metrics value at its step.
    actual = {}
    scalar_count = 0
    for tag in sorted(tags.get("scalars", [])):
        for event in accumulator.Scalars(tag):
            scalar_count += 1
            value = np.float32(event.value)
            actual.setdefault((tag, event.step), []).append(value)
            wanted = expected.get((tag, event.step))
            if wanted is None:
                if not any(t == tag for t, _ in expected):
                    fail(f"scalar tag {tag!r} is in the event files but in no metrics.jsonl line")
                fail(f"scalar {tag!r} at step {event.step} is in the event files but not in metrics.jsonl")
            if not any(same(value, w) for w in wanted):
                fail(f"scalar {tag!r} at step {event.step}: events have {str(value)}, "
                     f"metrics.jsonl has {', '.join(str(w) for w in wanted)} (as float32)")

    # Metrics → events: every metrics value must have a scalar event.
    for (tag, step), wanted in sorted(expected.items()):
        found = actual.get((tag, step))
        if found is None:
            if tag not in tags.get("scalars", []):
                fail(f"metrics.jsonl key {tag!r} has no scalar tag in the event files")
            fail(f"metrics.jsonl has {tag!r} at step {step}, the event files have no such scalar")
        for w in wanted:
            if not any(same(w, v) for v in found):
                fail(f"scalar {tag!r} at step {step}: metrics.jsonl has {w} (as float32), "
                     f"events have {', '.join(str(v) for v in found)}")

    histogram_count = 0
    for tag, num in args.histogram:
        if tag not in tags.get("histograms", []):
            fail(f"histogram {tag!r} is not in the event files")
        by_step = {}
        for event in accumulator.Histograms(tag):
            by_step.setdefault(event.step, []).append(event.histogram_value)
        for step in sorted(logged_steps):
            if step not in by_step:
                fail(f"histogram {tag!r} is missing at logged step {step}")
            for h in by_step[step]:
                histogram_count += 1
                where = f"histogram {tag!r} at step {step}"
                if h.num != num:
                    fail(f"{where}: num is {h.num:g}, expected {num:g}")
                if len(h.bucket) != len(h.bucket_limit):
                    fail(f"{where}: {len(h.bucket)} buckets but {len(h.bucket_limit)} bucket limits")
                if sum(h.bucket) != h.num:
                    fail(f"{where}: bucket counts sum to {sum(h.bucket):g}, num is {h.num:g}")
                if not h.min <= h.max:
                    fail(f"{where}: min {h.min!r} > max {h.max!r}")

    scalar_tags = len(tags.get("scalars", []))
    print(f"checked {scalar_count} scalars over {scalar_tags} tags and {histogram_count} histograms")


if __name__ == "__main__":
    main()
