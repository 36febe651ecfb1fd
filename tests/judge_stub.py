"""A local OpenAI-compatible judge for tests: deterministic replies, scripted failures and misbehaviour."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LATIN1_REPLY = '{"choices": [{"message": {"content": "caf\xe9 VERDICT: ACCEPT"}}]}'.encode("latin-1")


class JudgeStub:
    """Serves /v1/chat/completions on ``host`` (127.0.0.1). ``reply(messages)`` decides the answer's content
    (any JSON value: a test may serve null or a number).

    ``failures[text] = [mode, ...]`` scripts what the first calls whose last message contains ``text`` get
    before a good reply (consumed in order; ``text=""`` matches every call). Modes: an HTTP status (``"500"``,
    ``"401"``, ...) with an empty body; ``"timeout"`` (a good reply after ``delay_s``); ``"garbage"`` (not
    JSON); ``"drip"`` (a body that trickles one byte every ``drip_s``); ``"cut"`` (the connection closes mid-body);
    ``"latin1"`` (a body that is not UTF-8); ``"retry-after=V"`` (429 with ``Retry-After: V``); ``"redirect=URL"``
    (302 to URL). Every request, of any method, is recorded in ``seen`` (method, headers, arrival time); the JSON
    bodies of POSTs also in ``requests``.
    """

    def __init__(self, reply, failures=None, delay_s=2.0, host="127.0.0.1", drip_s=0.1, drip_bytes=40):
        self.reply, self.failures, self.delay_s = reply, dict(failures or {}), delay_s
        self.drip_s, self.drip_bytes = drip_s, drip_bytes
        self.requests, self.seen = [], []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                stub.seen.append({"method": "GET", "headers": dict(self.headers), "time": time.monotonic()})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                stub.seen.append({"method": "POST", "headers": dict(self.headers), "time": time.monotonic()})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                text = body["messages"][-1]["content"]
                mode = next((stub.failures[k].pop(0) for k in stub.failures if k in text and stub.failures[k]), None)
                try:
                    self._answer(mode, body)
                except OSError:  # the client gave up (deadline) and closed the connection
                    self.close_connection = True

            def _status(self, code, **headers):
                self.send_response(code)
                for k, v in {"Content-Length": "0", **headers}.items():
                    self.send_header(k, v)
                self.end_headers()

            def _answer(self, mode, body):
                if mode == "timeout":
                    time.sleep(stub.delay_s)
                if mode and mode.isdigit():
                    return self._status(int(mode))
                if mode and mode.startswith("retry-after="):
                    return self._status(429, **{"Retry-After": mode.split("=", 1)[1]})
                if mode and mode.startswith("redirect="):
                    return self._status(302, Location=mode.split("=", 1)[1])
                out = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": stub.reply(body["messages"])}}]}).encode()
                out = {"garbage": b"not json", "latin1": LATIN1_REPLY}.get(mode, out)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(stub.drip_bytes if mode == "drip" else len(out)))
                self.end_headers()
                if mode == "drip":
                    for _ in range(stub.drip_bytes):
                        time.sleep(stub.drip_s)
                        self.wfile.write(b" ")
                elif mode == "cut":
                    self.wfile.write(out[: len(out) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(out)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
