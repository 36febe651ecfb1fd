"""Continuous batching: a fixed set of decode slots refilled from a queue, over a paged KV pool.

Why: thinking traces are long and their lengths long-tailed. A static batch runs until its longest row ends
and sizes every row's KV for ``max_new_tokens``; here a finished row frees its slot and its pages at the next
host check and the next sample takes them, so slot-steps go to tokens, and KV memory follows live tokens.

How, on every platform (XLA; no custom kernel):

* **Slots.** ``slots`` rows decode together in one compiled program that runs ``steps_per_sync`` steps (a
  ``while_loop`` that stops early once no row is live) between host checks. Shapes never change, so inserting
  and freeing rows never recompiles. A call goes on past ``steps_per_sync``, up to ``max_steps_per_sync`` (4 x
  ``steps_per_sync`` by default), while a host check would change nothing: no row has ended while prompts
  wait for a slot, the live rows do not fit a narrower width, and every live row has a page for its next token
  (the host gives each row pages for ``steps_per_sync`` steps, and for a whole call from what is free beyond a
  reserve). With equal or slowly ending lengths this saves host checks; a refill or a narrower width never
  comes later than without it.
* **Pages.** Keys/values live in one pool per layer, ``[num_pages, page_size, kv_heads, head_dim]``. A row
  reads its tokens through a page table (:class:`~cogito_jax.models.attention.PagedKV`): first its prompt's
  pages, which the prompt's ``N`` samples share (the prompt is stored once), then pages of its own, taken
  from the free list ``page_size`` tokens ahead of need and returned when the row ends. Attention reads only
  live blocks (:func:`~cogito_jax.models.attention.paged_attention`). Page 0 is never given out: rows with
  nothing to write write there.
* **Shared prompt reads (cascade attention).** In a decode step a prompt's pages are read once for up to
  ``share_rows`` of its live rows together (an *entry*, rebuilt by the host at every check), and each row then
  reads only its own generated pages; without it every row would read its prompt through its page table, ``N``
  times per prompt. The own-page reads go in groups of ``row_group`` rows, the rows sorted by length at every
  check, each group reading only as far as its own longest row: with long-tailed lengths the short rows do not
  read as many blocks as the longest row in the batch.
* **Prefill.** A prompt's audio is encoded once, ``ENCODE_BATCH`` prompts per encoder call (the next prompts in
  the queue are encoded ahead of their prefill); its tokens go through the model in chunks of
  ``prefill_chunk`` (a long prompt never needs a program of its own length), writing the prompt's pages. The
  last chunk's logits give every sample its first token.
* **Preemption.** When the pool runs short the newest row gives its pages back and its sample goes back to the
  queue, to be generated again from its first token (vLLM's recompute preemption); determinism makes the
  result the same.
* **Determinism.** A sample's random number at step ``i`` comes from ``fold_in(fold_in(fold_in(seed, prompt
  uid), sample), i)`` (the uid is a hash of the prompt id) and every row's arithmetic is its own, so its
  tokens depend on (model, prompt, settings, seed, prompt id, sample index) only: not on the slot count, the
  arrival order, the other rows, the process count or a resume.

Per request: ``max_new_tokens``, temperature / top-k / top-p, stop ids; every emitted token comes with its
log-probability under the raw model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cogito_jax.models.attention import PagedKV, SharedPrompts
from cogito_jax.models.layers import dtype_of
from cogito_jax.sampling.engine import unstack_fits
from cogito_jax.sampling.strategies import SamplingParams, select_tokens_u, uniform

MAX_STOP_IDS = 8
# Prompts per audio-encoder call (the next ones in the queue are encoded ahead of their prefill). Fixed, not a
# setting: the encoder's program then has one shape, and a prompt's embeddings are the same bits whichever
# prompts share its call and wherever it sits in it (a different batch shape may change the last bit).
ENCODE_BATCH = 8


@dataclasses.dataclass(frozen=True)
class SlotConfig:
    slots: int = 16  # rows decoding at once
    page_size: int = 16  # tokens per KV page
    max_context: int = 4096  # prompt + generated tokens of one row (the page table's width)
    num_pages: int = 0  # KV pool size in pages; 0: half of every slot at max_context, plus one row's worth
    prefill_chunk: int = 128  # prompt tokens per prefill call
    steps_per_sync: int = 8  # decode steps per device call between host checks
    max_steps_per_sync: int = 0  # ... while a check would change nothing (module docstring); 0: 4 x steps_per_sync
    block_pages: int = 4  # pages attention reads per step of its loop
    narrowest: int = 0  # smallest decode width once few rows are left (0: slots // 8; never below 2)
    share_rows: int = 8  # rows of one prompt that read its pages together in a decode step (N samples: N)
    row_group: int = 8  # rows (ordered by length) per own-page read loop in a decode step; 0: all rows in one

    def __post_init__(self):
        for name in ("narrowest", "row_group", "max_steps_per_sync"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("slots", "page_size", "max_context", "prefill_chunk", "steps_per_sync", "block_pages",
                     "share_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_steps_per_sync and self.max_steps_per_sync < self.steps_per_sync:
            raise ValueError(f"max_steps_per_sync={self.max_steps_per_sync} must be >= steps_per_sync="
                             f"{self.steps_per_sync}")
        if self.num_pages and self.num_pages < self.table_width + 1:
            raise ValueError(f"num_pages={self.num_pages} cannot hold one row of max_context={self.max_context} "
                             f"tokens ({self.table_width} pages of {self.page_size}, plus the null page)")

    @property
    def table_width(self) -> int:
        """Pages in a row's table: ``max_context`` tokens plus the prompt's last partial page, whole blocks."""
        need = -(-self.max_context // self.page_size) + 1
        return -(-need // self.block_pages) * self.block_pages

    @property
    def longest_call(self) -> int:
        """Decode steps one call may run (``max_steps_per_sync``, or 4 x ``steps_per_sync`` when 0)."""
        return self.max_steps_per_sync or 4 * self.steps_per_sync

    @property
    def widths(self) -> tuple[int, ...]:
        """Decode widths (rows per call): ``slots``, then halves down to ``narrowest``; one program each. Never
        one row: a one-row product takes another kernel (matrix-vector) whose sums are not bitwise those of the
        batched one, and a sample's log-probs would then depend on how many rows were left beside it."""
        low, out, x = max(2, self.narrowest or self.slots // 8), [], self.slots
        while x > low:
            out.append(x)
            x //= 2
        return tuple(out) + (max(x, low),) if out else (self.slots,)

    @property
    def pool_pages(self) -> int:
        return self.num_pages or self.slots * self.table_width // 2 + self.table_width + 1


@dataclasses.dataclass
class Request:
    """One prompt and the samples to draw from it."""

    id: str
    ids: Sequence[int]  # the prompt's token ids, unpadded
    samples: Sequence[int]  # sample indices to generate (all of range(N), or those a resumed run lacks)
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: Sequence[int] = ()
    mel: Callable[[], np.ndarray] | np.ndarray | None = None  # [frames, n_mels], or a function giving it
    n_frames: int = 0  # valid frames of ``mel`` (0: no audio)


@dataclasses.dataclass
class Finished:
    id: str
    sample: int
    tokens: list[int]  # emitted tokens, the stop token included
    logprobs: list[float]
    finish_reason: str  # "eos" (a stop id was emitted) or "length"


def prompt_uid(prompt_id: str) -> int:
    """The 31-bit number a prompt's random numbers are keyed by (a hash of its id)."""
    return int.from_bytes(hashlib.blake2b(str(prompt_id).encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


class Rows(NamedTuple):
    """The decode slots' state on the device, one entry per slot."""

    tok: jax.Array  # int32: the last emitted token (the next input)
    emitted: jax.Array  # int32: tokens emitted so far
    prompt_len: jax.Array  # int32
    gen_start: jax.Array  # int32: slot of the first generated token
    budget: jax.Array  # int32: max_new_tokens
    live: jax.Array  # bool: the slot holds an unfinished sample
    table: jax.Array  # int32 [S, W]
    params: SamplingParams
    uid: jax.Array  # int32
    sample: jax.Array  # int32
    stop: jax.Array  # int32 [S, MAX_STOP_IDS], -1 = none


def row_uniforms(seed_key: jax.Array, uid_r: jax.Array, sample_r: jax.Array, step_r: jax.Array) -> jax.Array:
    """Each row's uniform number at its own step: keyed by (seed, prompt uid, sample index, step) alone."""
    def one(u, s, t):
        return uniform(jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(seed_key, u), s), t))

    return jax.vmap(one)(uid_r, sample_r, step_r)


class _Prompt:
    """A prefilled prompt on the host: its pages (held while any of its samples may still read them)."""

    def __init__(self, req: Request, pages: list[int], first: dict[int, tuple[int, float]]):
        self.req, self.pages, self.first = req, pages, first
        self.pending = deque(s for s in req.samples)
        self.running = 0
        self.uid = prompt_uid(req.id)


class _Row:
    def __init__(self, prompt: _Prompt, sample: int, seq: int):
        self.prompt, self.sample, self.seq = prompt, sample, seq
        self.pages: list[int] = []
        tok, lp = prompt.first[sample]
        self.tokens, self.logprobs = [tok], [lp]


class ContinuousEngine:
    """Compiled programs (audio encoding, chunked prefill, first tokens, ``steps_per_sync`` decode steps) and the
    host scheduler around them, for one model."""

    def __init__(self, model: nnx.Module, cfg: SlotConfig = SlotConfig(), *, unstack_layers: bool | None = None):
        self.cfg = cfg
        self.graphdef, self.state = nnx.split(model)
        text = model.cfg.text
        self.audio_token_id = model.cfg.audio_token_id
        unstack = unstack_fits(model) if unstack_layers is None else unstack_layers
        if unstack:  # one sliced copy of the layer weights for every call (see engine.py on why)
            layers = model.llm.unstack_layers()
            self.layer_graph, self.layer_states = nnx.graphdef(layers[0]), [nnx.state(x) for x in layers]
        else:
            self.layer_graph, self.layer_states = None, None
        shape = (cfg.pool_pages, cfg.page_size, text.num_kv_heads, text.head_dim)
        dt = dtype_of(text.dtype)
        self.k = tuple(jnp.zeros(shape, dt) for _ in range(text.num_layers))
        self.v = tuple(jnp.zeros(shape, dt) for _ in range(text.num_layers))
        self.kv_bytes = 2 * text.num_layers * int(np.prod(shape)) * jnp.dtype(dt).itemsize
        self.page_bytes = self.kv_bytes // cfg.pool_pages
        self.trace_counts = {"encode": 0, "prefill": 0, "first": 0, "decode": 0}
        self._jit = {}

    def load_weights(self, model: nnx.Module) -> None:
        """Samples from now on with ``model``'s weights (a model of the same structure and shapes: the policy after
        an update) without compiling anything again."""
        graphdef, state = nnx.split(model)
        if jax.tree.structure(state) != jax.tree.structure(self.state):
            raise ValueError("load_weights: the model's structure differs from the engine's")
        self.state = state
        if self.layer_states is not None:
            self.layer_states = [nnx.state(x) for x in model.llm.unstack_layers()]

    # ----------------------------------------------------------------------------------------- compiled parts

    def _layers(self, layer_states):
        return None if layer_states is None else [nnx.merge(self.layer_graph, s) for s in layer_states]

    def _encode_fn(self):
        if "encode" not in self._jit:
            def encode(state, feats, fmask):
                self.trace_counts["encode"] += 1
                return nnx.merge(self.graphdef, state).encode_audio(feats, fmask)[0]

            self._jit["encode"] = jax.jit(encode)
        return self._jit["encode"]

    def _prefill_fn(self, has_audio: bool):
        name = ("prefill", has_audio)
        if name not in self._jit:
            cfg, token = self.cfg, self.audio_token_id

            def prefill(state, layer_states, k, v, ids_c, start, n_real, audio_sd, audio_off, table_w, prompt_len):
                self.trace_counts["prefill"] += 1
                llm = nnx.merge(self.graphdef, state).llm
                x = llm.embed(ids_c[None])
                if has_audio:
                    is_audio = ids_c == token
                    rank = jnp.clip(audio_off + jnp.cumsum(is_audio) - 1, 0, audio_sd.shape[0] - 1)
                    x = jnp.where(is_audio[None, :, None], audio_sd[rank][None].astype(x.dtype), x)
                c = ids_c.shape[0]
                pos = start + jnp.arange(c, dtype=jnp.int32)
                slot = jnp.where(jnp.arange(c) < n_real, pos, -1)
                view = PagedKV(None, None, table_w[None], slot[None], prompt_len[None],
                               jnp.full((1,), cfg.table_width * cfg.page_size, jnp.int32), cfg.block_pages)
                h, k, v = llm.paged(x, pos[None], k, v, view, self._layers(layer_states))
                return k, v, llm.logits(h[0, n_real - 1]).astype(jnp.float32)

            self._jit[name] = jax.jit(prefill, donate_argnums=(2, 3))
        return self._jit[name]

    def _first_fn(self):
        if "first" not in self._jit:
            def first(logits_v, params, uid, sample, seed_key):
                self.trace_counts["first"] += 1
                r = sample.shape[0]
                u = row_uniforms(seed_key, jnp.full((r,), uid), sample, jnp.zeros((r,), jnp.int32))
                return select_tokens_u(jnp.broadcast_to(logits_v, (r, logits_v.shape[0])), u, params)

            self._jit["first"] = jax.jit(first)
        return self._jit["first"]

    def _decode_fn(self):
        if "decode" not in self._jit:
            cfg = self.cfg
            least, steps = cfg.steps_per_sync, cfg.longest_call
            page, w = cfg.page_size, cfg.table_width

            def decode(state, layer_states, k, v, rows: Rows, share, seed_key, waiting, narrower):
                """``waiting``: prompts wait for a slot; ``narrower``: the next narrower width (0: none)."""
                self.trace_counts["decode"] += 1
                s = rows.tok.shape[0]
                e, r = share[2].shape
                shared = SharedPrompts(*share, chunk=max(1, e // (2 * r)))
                # Each row's uniform numbers for this call's steps (emitted, emitted + 1, ...), drawn in one batch
                # before the loop: a live row's step i is its token emitted + i.
                u_all = jax.vmap(lambda j: row_uniforms(seed_key, rows.uid, rows.sample, rows.emitted + j),
                                 out_axes=1)(jnp.arange(steps, dtype=jnp.int32))
                out_tok = jnp.full((s, steps), -1, jnp.int32)
                out_lp = jnp.zeros((s, steps), jnp.float32)

                started = rows.live

                def cond(c):
                    i, rows, *_ = c
                    live = rows.live
                    # the page of each row's next slot (0, the null page, where the host gave none)
                    nxt = jnp.clip((rows.gen_start + rows.emitted - 1) // page, 0, w - 1)
                    has_page = jnp.take_along_axis(rows.table, nxt[:, None], axis=1)[:, 0] > 0
                    check = ((waiting & jnp.any(started & ~live)) | (jnp.sum(live) <= narrower)
                             | jnp.any(live & ~has_page))
                    return (i < steps) & jnp.any(live) & ((i < least) | ~check)

                def body(c):
                    i, rows, k, v, out_tok, out_lp, state, layer_states = c
                    llm = nnx.merge(self.graphdef, state).llm
                    active = rows.live
                    slot = jnp.where(active, rows.gen_start + rows.emitted - 1, -1)
                    pos = rows.prompt_len + rows.emitted - 1
                    view = PagedKV(None, None, rows.table, slot[:, None], rows.prompt_len, rows.gen_start,
                                   cfg.block_pages, shared, cfg.row_group)
                    h, k, v = llm.paged(llm.embed(rows.tok[:, None]), pos[:, None], k, v, view,
                                        self._layers(layer_states))
                    logits = llm.logits(h[:, 0])
                    tok, lp = select_tokens_u(logits, u_all[:, i], rows.params)
                    emitted = rows.emitted + active.astype(jnp.int32)
                    stopped = jnp.any(tok[:, None] == rows.stop, axis=-1) | (emitted >= rows.budget)
                    rows = rows._replace(tok=jnp.where(active, tok, rows.tok), emitted=emitted,
                                         live=active & ~stopped)
                    out_tok = out_tok.at[:, i].set(jnp.where(active, tok, -1))
                    out_lp = out_lp.at[:, i].set(jnp.where(active, lp, 0.0))
                    return i + 1, rows, k, v, out_tok, out_lp, state, layer_states

                c = (jnp.int32(0), rows, k, v, out_tok, out_lp, state, layer_states)
                i, rows, k, v, out_tok, out_lp, *_ = jax.lax.while_loop(cond, body, c)
                return k, v, rows, out_tok, out_lp, i

            self._jit["decode"] = jax.jit(decode, donate_argnums=(2, 3))
        return self._jit["decode"]

    # --------------------------------------------------------------------------------------------- scheduler

    def run(self, requests: Iterable[Request], on_finished: Callable[[Finished], None], *, seed: int = 0,
            max_frames: int = 3000, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Generates every request's samples; ``on_finished`` gets each sample as it completes (in completion
        order); ``on_step`` gets the running statistics after every decode call. ``max_frames``: the mel width the
        audio encoder takes. Returns the statistics (``utilization`` = emitted tokens / slot-steps of the decode
        calls; ``peak_kv_bytes`` = the most pages in use at once)."""
        cfg = self.cfg
        s, w, page = cfg.slots, cfg.table_width, cfg.page_size
        seed_key = jax.random.key(seed)
        queue = deque(requests)
        free = list(range(cfg.pool_pages - 1, 0, -1))  # page 0 is the null page
        slots: list[_Row | None] = [None] * s
        open_prompts: deque[_Prompt] = deque()
        encoded: dict[int, jax.Array] = {}  # id(request) -> its audio, encoded ahead of its prefill
        host = dict(tok=np.zeros(s, np.int32), emitted=np.zeros(s, np.int32), prompt_len=np.zeros(s, np.int32),
                    gen_start=np.zeros(s, np.int32), budget=np.ones(s, np.int32), live=np.zeros(s, bool),
                    table=np.zeros((s, w), np.int32), temperature=np.zeros(s, np.float32),
                    top_k=np.zeros(s, np.int32), top_p=np.ones(s, np.float32), uid=np.zeros(s, np.int32),
                    sample=np.zeros(s, np.int32), stop=np.full((s, MAX_STOP_IDS), -1, np.int32))
        stats = {"samples": 0, "tokens": 0, "decode_calls": 0, "encode_calls": 0, "slot_steps": 0, "decode_tokens": 0,
                 "prefill_tokens": 0, "calls_by_width": {}, "preempted": 0, "peak_pages": 0,
                 "pool_pages": cfg.pool_pages, "kv_pool_bytes": self.kv_bytes, "peak_kv_bytes": 0,
                 "live": 0, "seconds": 0.0}
        t0 = time.time()
        seq = 0

        def used() -> int:
            return cfg.pool_pages - 1 - len(free)

        def finish(row: _Row, reason: str) -> None:
            stats["samples"] += 1
            stats["tokens"] += len(row.tokens)
            on_finished(Finished(row.prompt.req.id, row.sample, row.tokens, row.logprobs, reason))
            release(row)

        def release(row: _Row) -> None:
            free.extend(reversed(row.pages))
            row.pages = []
            p = row.prompt
            p.running -= 1
            if not p.pending and not p.running:
                free.extend(reversed(p.pages))
                p.pages = []
                if p in open_prompts:
                    open_prompts.remove(p)

        def stop_of(req: Request) -> tuple[int, ...]:
            ids = tuple(int(x) for x in req.stop_ids)
            if len(ids) > MAX_STOP_IDS:
                raise ValueError(f"request {req.id!r}: {len(ids)} stop ids, at most {MAX_STOP_IDS}")
            return ids

        def pages_for_call(row: _Row, steps: int) -> int:
            """Own pages a live row needs for its next ``steps`` steps."""
            e = len(row.tokens)
            last = min(e - 1 + steps - 1, row.prompt.req.max_new_tokens - 2)
            gen_start = len(row.prompt.pages) * page
            return (gen_start + last) // page + 1 - len(row.prompt.pages)

        def audio_of(req: Request) -> jax.Array:
            """The prompt's encoded audio ``[audio tokens, D]``. Encoded ``ENCODE_BATCH`` prompts at a time: this
            one and the next ones in the queue with audio, kept until their prefill."""
            if id(req) not in encoded:
                batch = [req, *itertools.islice((r for r in itertools.islice(queue, 1, None)
                                                 if r.n_frames and id(r) not in encoded), ENCODE_BATCH - 1)]
                mels = [np.asarray(r.mel() if callable(r.mel) else r.mel, np.float32) for r in batch]
                feats = np.zeros((ENCODE_BATCH, mels[0].shape[1], max_frames), np.float32)
                fmask = np.zeros((ENCODE_BATCH, max_frames), np.int32)
                for i, (r, mel) in enumerate(zip(batch, mels, strict=True)):
                    feats[i, :, :r.n_frames] = mel[:r.n_frames].T
                    fmask[i, :r.n_frames] = 1
                embeds = self._encode_fn()(self.state, feats, fmask)
                stats["encode_calls"] += 1
                for i, r in enumerate(batch):
                    encoded[id(r)] = embeds[i]
            return encoded.pop(id(req))

        def prefill(req: Request) -> _Prompt | None:
            n = len(req.ids)
            n_pages = -(-n // page)
            if n_pages + -(-max(req.max_new_tokens - 1, 0) // page) > w:
                raise ValueError(f"request {req.id!r}: {n} prompt tokens + max_new_tokens={req.max_new_tokens} "
                                 f"do not fit max_context={cfg.max_context}")
            if len(free) < n_pages + len([r for r in slots if r]) + 1:
                return None  # wait for pages (leave each live row room to grow)
            pages = [free.pop() for _ in range(n_pages)]
            table = np.zeros(w, np.int32)
            table[:n_pages] = pages
            has_audio = bool(req.n_frames)
            audio_sd = audio_of(req) if has_audio else jnp.zeros((1, 1), jnp.float32)
            ids = np.asarray(req.ids, np.int32)
            c = cfg.prefill_chunk
            fn = self._prefill_fn(has_audio)
            logits = None
            for start in range(0, n, c):
                chunk = np.zeros(c, np.int32)
                part = ids[start:start + c]
                chunk[:len(part)] = part
                off = int((ids[:start] == self.audio_token_id).sum()) if has_audio else 0
                self.k, self.v, logits = fn(self.state, self.layer_states, self.k, self.v, chunk, np.int32(start),
                                            np.int32(len(part)), audio_sd, np.int32(off), table, np.int32(n))
            stats["prefill_tokens"] += n
            samples = np.asarray(list(req.samples), np.int32)
            r = 1 << max(len(samples) - 1, 0).bit_length()  # a handful of shapes
            padded = np.zeros(r, np.int32)
            padded[:len(samples)] = samples
            params = SamplingParams.make(r, req.temperature, req.top_k, req.top_p)
            tok, lp = self._first_fn()(logits, params, np.int32(prompt_uid(req.id)), padded, seed_key)
            tok, lp = np.asarray(tok), np.asarray(lp)
            first = {int(sm): (int(tok[i]), float(lp[i])) for i, sm in enumerate(samples)}
            return _Prompt(req, pages, first)

        def admit(idx: int) -> bool:
            nonlocal seq
            while True:
                while open_prompts and not open_prompts[0].pending:
                    open_prompts.popleft()
                if not open_prompts:
                    if not queue:
                        return False
                    p = prefill(queue[0])
                    if p is None:
                        return False
                    queue.popleft()
                    if not p.pending:
                        free.extend(reversed(p.pages))
                        continue
                    open_prompts.append(p)
                p = open_prompts[0]
                sample = p.pending.popleft()
                p.running += 1
                row = _Row(p, sample, seq)
                seq += 1
                req, stop = p.req, stop_of(p.req)
                if row.tokens[0] in stop or req.max_new_tokens <= 1:
                    finish(row, "eos" if row.tokens[0] in stop else "length")
                    continue
                slots[idx] = row
                host["tok"][idx], host["emitted"][idx], host["prompt_len"][idx] = row.tokens[0], 1, len(req.ids)
                host["gen_start"][idx], host["budget"][idx] = len(p.pages) * page, req.max_new_tokens
                host["live"][idx] = True
                host["table"][idx] = 0
                host["table"][idx, :len(p.pages)] = p.pages
                host["temperature"][idx], host["top_k"][idx] = req.temperature, req.top_k
                host["top_p"][idx] = req.top_p
                host["uid"][idx], host["sample"][idx] = p.uid, sample
                host["stop"][idx] = -1
                host["stop"][idx, :len(stop)] = stop
                return True

        def grow() -> None:
            """Gives every live row the pages of its next ``steps_per_sync`` steps, preempting the newest rows if the
            pool is short, then of a whole call's steps (``longest_call``) from the pages free beyond a reserve (one
            page per slot and one whole row), in slot order."""
            while True:
                short = []
                for i, row in enumerate(slots):
                    if row is not None:
                        need = pages_for_call(row, cfg.steps_per_sync) - len(row.pages)
                        if need > 0:
                            short.append((i, need))
                if sum(n for _, n in short) <= len(free):
                    break
                live = [i for i, r in enumerate(slots) if r is not None]
                if len(live) == 1:
                    raise RuntimeError(f"the KV pool ({cfg.pool_pages} pages) cannot hold one row")
                victim = max(live, key=lambda i: slots[i].seq)
                row = slots[victim]
                slots[victim] = None
                host["live"][victim] = False
                stats["preempted"] += 1
                row.prompt.pending.appendleft(row.sample)
                free.extend(reversed(row.pages))
                row.pages = []
                row.prompt.running -= 1
                if row.prompt not in open_prompts:
                    open_prompts.appendleft(row.prompt)
            for i, need in short:
                take(i, need)
            spare = len(free) - s - w
            for i, row in enumerate(slots):
                if row is not None and spare > 0:
                    more = min(spare, pages_for_call(row, cfg.longest_call) - len(row.pages))
                    if more > 0:
                        take(i, more)
                        spare -= more

        def take(i: int, n: int) -> None:
            row = slots[i]
            for _ in range(n):
                pg = free.pop()
                host["table"][i, len(row.prompt.pages) + len(row.pages)] = pg
                row.pages.append(pg)

        def entries(wd: int) -> tuple[np.ndarray, ...]:
            """The decode call's prompt entries (:class:`~cogito_jax.models.attention.SharedPrompts`): each live
            prompt's rows, ``share_rows`` at a time, with the prompt's pages and length."""
            r = min(cfg.share_rows, wd)
            groups: dict[int, tuple[_Prompt, list[int]]] = {}
            for i, row in enumerate(slots[:wd]):
                if row is not None:
                    groups.setdefault(id(row.prompt), (row.prompt, []))[1].append(i)
            table, length = np.zeros((wd, w), np.int32), np.zeros(wd, np.int32)
            rows, count = np.full((wd, r), wd, np.int32), 0
            for p, idx in groups.values():
                for j in range(0, len(idx), r):
                    table[count, :len(p.pages)] = p.pages
                    length[count] = len(p.req.ids)
                    rows[count, :len(idx[j:j + r])] = idx[j:j + r]
                    count += 1
            return table, length, rows, np.int32(count)

        def compact() -> int:
            """Moves the live rows to the lowest slots, longest first (each group of ``row_group`` rows then reads
            its own pages up to its own longest row); returns the decode width: the narrowest of ``widths`` that
            holds them (once the queue runs dry the last long rows do not pay for a full batch of idle slots)."""
            live = sorted((i for i, r in enumerate(slots) if r is not None), key=lambda i: -len(slots[i].tokens))
            order = live + [i for i, r in enumerate(slots) if r is None]
            slots[:] = [slots[i] for i in order]
            for arr in host.values():
                arr[:] = arr[order]
            return min(x for x in widths if x >= len(live))

        widths = cfg.widths
        decode = self._decode_fn()
        while True:
            for i in range(s):
                if slots[i] is None and not admit(i):
                    break
            if not any(r is not None for r in slots):
                if queue or open_prompts:
                    raise RuntimeError(f"the KV pool ({cfg.pool_pages} pages) cannot hold the next prompt")
                break
            grow()
            wd = compact()
            stats["peak_pages"] = max(stats["peak_pages"], used())
            rows = Rows(*(jnp.asarray(host[k][:wd]) for k in ("tok", "emitted", "prompt_len", "gen_start", "budget",
                                                               "live", "table")),
                        SamplingParams(jnp.asarray(host["temperature"][:wd]), jnp.asarray(host["top_k"][:wd]),
                                       jnp.asarray(host["top_p"][:wd])),
                        *(jnp.asarray(host[k][:wd]) for k in ("uid", "sample", "stop")))
            waiting = bool(queue) or any(p.pending for p in open_prompts)
            narrower = max((x for x in widths if x < wd), default=0)
            self.k, self.v, rows, out_tok, out_lp, n_steps = decode(self.state, self.layer_states, self.k, self.v,
                                                                    rows, entries(wd), seed_key, np.bool_(waiting),
                                                                    np.int32(narrower))
            out_tok, out_lp, live = np.asarray(out_tok), np.asarray(out_lp), np.asarray(rows.live)
            n_steps = int(n_steps)
            stats["decode_calls"] += 1
            stats["slot_steps"] += wd * n_steps
            stats["calls_by_width"][wd] = stats["calls_by_width"].get(wd, 0) + 1
            for i, row in enumerate(slots[:wd]):
                if row is None:
                    continue
                got = out_tok[i, :n_steps] >= 0
                row.tokens += out_tok[i, :n_steps][got].tolist()
                row.logprobs += out_lp[i, :n_steps][got].tolist()
                stats["decode_tokens"] += int(got.sum())
                host["tok"][i], host["emitted"][i] = row.tokens[-1], len(row.tokens)
                if not live[i]:
                    slots[i] = None
                    host["live"][i] = False
                    finish(row, "eos" if row.tokens[-1] in stop_of(row.prompt.req) else "length")
            stats["live"] = sum(r is not None for r in slots)
            stats["seconds"] = time.time() - t0
            if on_step is not None:
                on_step(stats)
        stats["seconds"] = time.time() - t0
        stats["peak_kv_bytes"] = stats["peak_pages"] * self.page_bytes
        stats["utilization"] = stats["decode_tokens"] / max(stats["slot_steps"], 1)
        return stats


_ENGINES: dict[tuple[int, SlotConfig], ContinuousEngine] = {}


def engine_for(model: nnx.Module, cfg: SlotConfig) -> ContinuousEngine:
    """One engine (compiled programs and KV pool) per live model object and slot configuration; it goes when the
    model is collected."""
    key = (id(model), cfg)
    if key not in _ENGINES:
        if not any(k[0] == id(model) for k in _ENGINES):
            weakref.finalize(model, _drop, id(model))
        _ENGINES[key] = ContinuousEngine(model, cfg)
    return _ENGINES[key]


def _drop(model_id: int) -> None:
    for k in [k for k in _ENGINES if k[0] == model_id]:
        del _ENGINES[k]
