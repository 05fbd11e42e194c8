"""`entropy-rl export RUN_DIR OUT_DIR [--step N]`: a run's policy as a Hugging Face checkpoint.

Writes config.json + safetensors (transformers' Qwen3ForCausalLM / Qwen2ForCausalLM loads
it), generation_config.json with the tokenizer's stop tokens (so `generate` stops at
`<|im_end|>` as the sampler does) and the tokenizer files (the run's HF tokenizer, or the
built-in one written as an HF tokenizer), so OUT_DIR is a complete model directory for transformers, vLLM or `entropy-rl eval`. The
checkpoint may come from any topology (mesh, device or process count); it is restored whole
onto one local device. On several processes each restores it and process 0 writes.
`--dtype bfloat16` halves the files (default: the parameters' dtype).
"""

from __future__ import annotations

import argparse
import os
import sys


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, step: int | None = None,
           dtype: str | None = None) -> int:
    """Write checkpoint `step` (default: latest) of `run_dir` to `out_dir` with its tokenizer's
    stop, pad and bos ids, tensors in `dtype` (default: as trained); returns the step."""
    import jax

    from entropy_rl.checkpoints import CheckpointReader, locate_checkpoint
    from entropy_rl.model import save_hf
    from entropy_rl.policy import load_policy

    run_dir, path_step = locate_checkpoint(run_dir)
    step = path_step if step is None else step
    with CheckpointReader(run_dir) as checkpointer:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{run_dir}: the run has no checkpoint yet")
    policy, tokenizer = load_policy(run_dir, step=step)
    save_hf(policy, os.fspath(out_dir), dtype=dtype, eos_token_ids=tokenizer.stop_token_ids,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    hf_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # the transformers tokenizer of an HFTokenizer
    if jax.process_index() == 0:
        hf_tokenizer.save_pretrained(os.fspath(out_dir))
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entropy-rl export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run directory (or its checkpoints/<step>)")
    parser.add_argument("out_dir", help="where to write the HF checkpoint")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="tensor dtype of the export (default: the parameters' dtype)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import jax

    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()  # before any other jax call; a no-op on one process
    try:
        step = export(args.run_dir, args.out_dir, step=args.step, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"entropy-rl export: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # the one writer reports
        print(f"wrote step {step} of {args.run_dir} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
