"""A local OpenAI-compatible judge for tests: deterministic replies, scripted failures and timeouts."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeStub:
    """Serves /v1/chat/completions on 127.0.0.1. ``reply(messages) -> str`` decides the answer.

    ``failures[text] = ["500", "timeout", "garbage", ...]`` scripts what the first calls whose last
    message contains ``text`` get before a good reply (consumed in order).
    """

    def __init__(self, reply, failures=None, delay_s=2.0):
        self.reply, self.failures, self.delay_s = reply, dict(failures or {}), delay_s
        self.requests = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                text = body["messages"][-1]["content"]
                mode = next((stub.failures[k].pop(0) for k in stub.failures if k in text and stub.failures[k]), None)
                if mode == "timeout":
                    time.sleep(stub.delay_s)
                if mode in ("500", "429"):
                    self.send_response(int(mode))
                    self.end_headers()
                    return
                out = b"not json" if mode == "garbage" else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": stub.reply(body["messages"])}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
