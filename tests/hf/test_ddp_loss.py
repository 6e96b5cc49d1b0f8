#!/usr/bin/env python3
"""Our data parallelism trains as PyTorch's DistributedDataParallel does: 2 CPU ranks of batch 1,
the same exported weights (preset tiny, seed 0), the same token file and the same global-batch /
rank slicing, 3 steps of SGD (lr 0.1) and of AdamW (lr 1e-3), fp32; ours (`harness run`,
`world_size: 2`) and DDP (transformers' LlamaForCausalLM in DistributedDataParallel, Gloo) record
the same per-step loss, the mean over the ranks. The comparison is tests/bench/ddp_peers.py's
compare() (its docstring says exactly what each side runs).

usage: test_ddp_loss.py HARNESS HARNESS_WORKER WORK_DIR

Tolerance: |ours - DDP| < 1e-5 at every step (ddp_peers.LOSS_TOLERANCE), the loss being ~6.2 on
tiny (an fp32 ulp there is 4.8e-7: 1e-5 is ~20 ulps). Measured on the 2-core EPYC CI machine:
SGD 0 at every step, AdamW 0, 2.4e-7, 2.4e-7 (DDP's mean of the two ranks' losses is taken in
float64, ours in fp32: half an ulp); longer runs drift a little further apart under AdamW: 6 steps
of 128 tokens differ by at most 3.1e-6 on tiny and 4.3e-6 on `small` (loss ~10.5; both in
reports/ddp-peers-cpu.md). Both sides run the same libtorch kernels on the
same fp32 weights; what may differ is summation order (HF rotates halves, we rotate interleaved
pairs of permuted q/k rows; the buckets' allreduce), a few ulps, which AdamW's first steps
(update ~ lr * sign(g) for tiny g) can turn into slightly different weights; 1e-5 leaves room
for that on another CPU, while any real difference in the step (a rank's gradient not averaged,
the wrong slice of data, a missed bucket, the loss not masked or not shifted) moves the loss by
far more. Negative control: DDP without gradient averaging (each rank steps on its own batch)
must differ from ours by at least 100 x the tolerance after the first step, so the comparison
sees the averaging. Under a minute on 2 cores. Offline.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
import ddp_peers  # noqa: E402

NEGATIVE_FACTOR = 100


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    harness, worker, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    tol = ddp_peers.LOSS_TOLERANCE
    failures = []
    start = time.monotonic()
    for optimizer in ("sgd", "adamw"):
        r = ddp_peers.compare(harness, worker, preset="tiny", optimizer=optimizer, steps=3,
                              warmup=1, seq_len=64, work=work,
                              no_sync_control=optimizer == "sgd")
        print(f"{optimizer} (lr {r['lr']}): ours {r['ours_losses']}")
        print(f"{' ' * len(optimizer)}  DDP {r['ddp_losses']}")
        print(f"  |diff| {['%.2e' % d for d in r['diffs']]}, max {r['max_diff']:.2e} "
              f"(tolerance {tol:g}); step time ours {r['ours_p50']:.4f} s, DDP "
              f"{r['ddp_p50']:.4f} s; comm_wait_s {r['comm_wait_s']:.5f}")
        if r["ours_world_size"] != 2:
            failures.append(f"{optimizer}: our run's world_size metric is "
                            f"{r['ours_world_size']}, expected 2")
        if len(r["ours_losses"]) != 3 or len(r["ddp_losses"]) != 3:
            failures.append(f"{optimizer}: expected 3 losses per side")
        if not r["max_diff"] < tol:
            failures.append(f"{optimizer}: losses differ by {r['max_diff']:.3e} >= {tol:g} "
                            f"(per step {r['diffs']})")
        if abs(r["ours_losses"][-1] - r["ours_losses"][0]) < NEGATIVE_FACTOR * tol:
            failures.append(f"{optimizer}: the loss hardly moved over the steps "
                            f"({r['ours_losses']}): the comparison would not see the updates")
        if "control_diffs" in r:
            moved = max(r["control_diffs"][1:])
            print(f"  control (DDP without gradient averaging): {r['control_losses']}, "
                  f"|diff| to ours after step 0 up to {moved:.2e}")
            if moved < NEGATIVE_FACTOR * tol:
                failures.append(f"negative control: DDP without averaging differs from ours by "
                                f"only {moved:.3e} (< {NEGATIVE_FACTOR} x {tol:g})")
    print(f"{time.monotonic() - start:.1f} s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
