"""An LLM judge behind any OpenAI-compatible chat-completions endpoint, built so nothing is lost.

Every call has a timeout; a failed call (connection error, HTTP 429/5xx, timeout, malformed reply)
is retried with exponential backoff; calls are rate-limited; each successful reply is cached on disk
(JSONL keyed by the request's hash), so a re-run never pays twice and a crashed run resumes where it
stopped. A call that still fails after its retries raises :class:`JudgeError`: callers record it as a
failure and never count it as a verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from cogito_jax.log import logger

Messages = Sequence[Mapping[str, str]]


class JudgeError(RuntimeError):
    """A judge call that failed after all retries; the message says why."""


class HttpJudge:
    """``complete(messages) -> str`` against ``{base_url}/chat/completions``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        requests_per_s: float = 0.0,
        cache_path: str | pathlib.Path | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.min_interval = 1.0 / requests_per_s if requests_per_s > 0 else 0.0
        self._last_call = 0.0
        self._lock = threading.Lock()
        self.cache_path = pathlib.Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = {}
        self.stats = {"calls": 0, "cache_hits": 0, "retries": 0, "failures": 0}
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line from a crash

    def _key(self, body: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def complete(self, messages: Messages, *, temperature: float = 0.0, max_tokens: int = 1024,
                 run: int = 0) -> str:
        """The judge's reply text; ``run`` separates repeated judgements of the same request in the cache."""
        body = {"model": self.model, "messages": list(messages), "temperature": temperature,
                "max_tokens": max_tokens}
        key = self._key({**body, "run": run})
        if key in self._cache:
            self.stats["cache_hits"] += 1
            return self._cache[key]
        reply = self._call_with_retries(body)
        self._cache[key] = reply
        if self.cache_path:
            with self._lock, self.cache_path.open("a") as f:
                f.write(json.dumps({"key": key, "reply": reply}) + "\n")
        return reply

    def _throttle(self) -> None:
        if not self.min_interval:
            return
        with self._lock:
            wait = self._last_call + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_call = time.monotonic()

    def _call_with_retries(self, body: Mapping[str, Any]) -> str:
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            self._throttle()
            self.stats["calls"] += 1
            try:
                return self._call(body)
            except JudgeError as e:
                last = str(e)
                logger.debug("judge attempt %d failed: %s", attempt + 1, last)
        self.stats["failures"] += 1
        raise JudgeError(f"judge call failed after {self.max_retries + 1} attempts: {last}")

    def _call(self, body: Mapping[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            raise JudgeError(f"HTTP {e.code} from {self.url}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            raise JudgeError(f"{type(e).__name__} calling {self.url}: {e}") from e
        except json.JSONDecodeError as e:
            raise JudgeError(f"reply from {self.url} is not JSON") from e
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"reply from {self.url} has no choices[0].message.content") from e


class EngineJudge:
    """The same ``complete(messages)`` interface backed by a local model through the sampling engine."""

    def __init__(self, model, tokenizer, family: str, max_new_tokens: int = 256):
        self.model, self.tokenizer, self.family, self.max_new_tokens = model, tokenizer, family, max_new_tokens
        self.stats = {"calls": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    def complete(self, messages: Messages, *, temperature: float = 0.0, max_tokens: int | None = None,
                 run: int = 0) -> str:
        import numpy as np

        from cogito_jax.data import chat
        from cogito_jax.sampling import engine_for
        from cogito_jax.sampling.driver import LENGTH_BUCKETS, bucket_length

        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        user = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
        fmt = chat.chat_format(self.family)
        ids = chat.encode_prompt(self.tokenizer, fmt, user, 0, system)
        eos = [self.tokenizer.convert_tokens_to_ids(t) for t in (chat.IM_END, "<|endoftext|>")]
        pad = self.tokenizer.pad_token_id
        # Left-padded to a length bucket, so the engine compiles one program per bucket, not per prompt length
        # (a prompt past the largest bucket runs at its own length).
        width = bucket_length(len(ids), LENGTH_BUCKETS) if len(ids) <= max(LENGTH_BUCKETS) else len(ids)
        self.stats["calls"] += 1
        out = engine_for(self.model).generate(
            np.asarray([pad] * (width - len(ids)) + list(ids))[None], max_new_tokens=max_tokens or self.max_new_tokens,
            temperature=temperature, eos_token_id=eos, pad_token_id=pad, seed=run)
        toks = [t for t in np.asarray(out.tokens)[0, 0].tolist() if t not in eos]
        return chat.split_thinking(self.tokenizer.decode(toks, skip_special_tokens=True))[1]
