"""`SamplingConfig`: every number that decides how responses are sampled."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How `generate` samples responses.

    Attributes:
      max_new_tokens: response length limit (tokens generated per row, stop token included).
      temperature: logits are divided by it; 0 means greedy (argmax, log-prob 0).
      top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
        (after temperature and top-k) is >= top_p; 1.0 keeps everything.
      top_k: keep the k most likely tokens (ties with the k-th kept too); 0 = off.
      n: samples per prompt; the n rows of one prompt are adjacent in the `Rollout`.
      stop_token_ids: a row stops after emitting any of these (the stop token is kept in the
        response and its mask).
      pad_token_id: fills prompt left-padding and the response after a row stops.
      prompt_bucket: the padded prompt length is rounded up to a multiple of this.
      response_bucket: the KV cache reserves max_new_tokens rounded up to a multiple of this,
        so nearby max_new_tokens values share one compiled program.
      decode_segments: the static scheduler decodes the response in up to this many
        compiled segments whose KV caches grow from the prompt plus the first
        ~R/decode_segments response slots to all R (`Program.cache_sizes`): the cache is
        allocated as it fills (each segment is one more compiled program per shape). A
        step's attention reads only up to the last filled slot whatever the segments.
        1 (the default) keeps a row's log-probs bitwise equal to the refill scheduler's;
        other cache sizes are other programs, which may round the last bit differently.
      progress_chunk: with `progress=True`, decode steps per compiled call between two
        updates of the progress bar.
      scheduler: "refill" runs all len(prompts) * n rows through a fixed number of slots
        (`max_slots`, `kv_cache_budget_gb`): a row that finishes frees its slot for a waiting
        row (see `entropy_rl.rollout.refill`); "static" decodes all rows as one batch until
        the last one stops. Both return the same rollout; refill with at least as many slots
        as rows is the static schedule.
      max_slots: refill: the most rows decoded at once, over all chips (0 = no limit but
        the budget).
      kv_cache_budget_gb: refill: the most KV-cache memory of the slots on each chip, in GB
        (1e9 bytes; 0 = no limit but max_slots); the slot count is the largest that fits
        (`refill.slot_count`; `entropy-rl plan` prints the slots and their cache per chip).
      sampling_copy: sample from the parameters' sampling view (`entropy_rl.rollout.params`):
        the weights cast to the model's compute dtype and split for decoding (no per-token
        all-gather of FSDP-split weights), made from the current parameters at the start of
        each `generate` call and dropped at its end. It is made only where it changes
        something (weights stored in another dtype, or a mesh of several devices); False
        samples from the parameters as they are.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    prompt_bucket: int = 64
    response_bucket: int = 64
    decode_segments: int = 1
    progress_chunk: int = 64
    scheduler: str = "refill"
    max_slots: int = 0
    kv_cache_budget_gb: float = 0.0
    sampling_copy: bool = True

    def __post_init__(self):
        # YAML lists arrive as lists; the config must stay hashable.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0.0, "temperature must be >= 0 (0 = greedy)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (self.n >= 1, "n must be >= 1"),
            (self.pad_token_id >= 0, "pad_token_id must be >= 0"),
            (self.prompt_bucket >= 1, "prompt_bucket must be >= 1"),
            (self.response_bucket >= 1, "response_bucket must be >= 1"),
            (self.decode_segments >= 1, "decode_segments must be >= 1"),
            (self.progress_chunk >= 1, "progress_chunk must be >= 1"),
            (self.scheduler in ("refill", "static"), "scheduler must be 'refill' or 'static'"),
            (self.max_slots >= 0, "max_slots must be >= 0 (0 = no limit)"),
            (self.kv_cache_budget_gb >= 0, "kv_cache_budget_gb must be >= 0 (0 = no limit)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingConfig: {message}, got {self}")
