"""An OpenAI-compatible chat completions endpoint that answers after ``--delay`` seconds,
for thousands of connections at once (asyncio), as a process of its own.

    python bench/slowllm.py --port 8977 --delay 10

It keeps each request's arrival time under the last message's content; ``GET /arrivals``
answers them as JSON ``{content: unix time}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

_ANSWER = {"id": "chatcmpl-bench", "object": "chat.completion", "model": "bench",
           "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "hello"}}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


class Server:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.arrivals: dict[str, float] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                length = next((int(line.split(":", 1)[1]) for line in lines
                               if line.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length) if length else b""
                if request_line.startswith("GET /arrivals"):
                    self._send(writer, json.dumps(self.arrivals).encode())
                else:
                    arrived = time.time()
                    messages = json.loads(body or b"{}").get("messages") or [{}]
                    self.arrivals[str(messages[-1].get("content"))] = arrived
                    await asyncio.sleep(self.delay_s)
                    self._send(writer, json.dumps(_ANSWER).encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))


async def serve(port: int, delay_s: float) -> None:
    server = await asyncio.start_server(Server(delay_s).handle, "127.0.0.1", port, backlog=8192)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
