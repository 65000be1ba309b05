#!/usr/bin/env python3
"""A whole batch through the official `openai` package against a running `pdq api`: a client
no one here wrote. Upload, create, retrieve until it ends, output and error files, a /v1/responses
batch read back as the SDK's `Response`, a /v1/embeddings batch as its `CreateEmbeddingResponse`,
list, cancel.

    pdq serve &  pdq api &  python3 scripts/openai-sdk.py [BASE_URL]

PDQ_API_KEY is sent as the key when set. Exits non-zero on the first thing that is not as
OpenAI's clients expect.

Webhooks (CONTRACT §15), when `--webhook-port PORT` (or PDQ_WEBHOOK_PORT) and PDQ_WEBHOOK_SECRET
are given: it listens on 127.0.0.1:PORT and checks, with the package's own
`client.webhooks.unwrap` (Standard Webhooks verification), that the batch it ran sends a signed
`batch.completed`. Start the API with the same secret:

    pdq api --webhook-url http://127.0.0.1:PORT/ --webhook-secret "$PDQ_WEBHOOK_SECRET" &
"""
import argparse
import base64
import http.server
import io
import json
import os
import queue
import struct
import sys
import threading
import time

from openai import OpenAI, NotFoundError, ConflictError
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response
from openai.types.webhooks import BatchCompletedWebhookEvent

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("base_url", nargs="?", default="http://127.0.0.1:8000/v1")
parser.add_argument("--webhook-port", type=int, default=os.environ.get("PDQ_WEBHOOK_PORT"))
args = parser.parse_args()
base_url = args.base_url
client = OpenAI(base_url=base_url, api_key=os.environ.get("PDQ_API_KEY", "unused"))


def webhook_receiver(port):
    """Every POST's body and headers, in a queue; each is answered 200 once read."""
    received = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.put((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return received


webhook_secret = os.environ.get("PDQ_WEBHOOK_SECRET")
hooks = None
if args.webhook_port is not None:
    if not webhook_secret:
        sys.exit("--webhook-port needs PDQ_WEBHOOK_SECRET, the secret `pdq api --webhook-secret` signs with")
    hooks = webhook_receiver(int(args.webhook_port))


def ended(batch):
    """The batch, retrieved until it ends."""
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    return batch


def run_batch(url, bodies, tag):
    """A batch of `bodies` for `url`, their custom_ids `{tag}-{i}`, run to its end: the uploaded
    file, the ended batch and its output lines by custom_id."""
    data = "".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": url, "body": b}) + "\n"
                   for i, b in enumerate(bodies)).encode()
    f = client.files.create(file=(f"{tag}.jsonl", io.BytesIO(data)), purpose="batch")
    batch = ended(client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h"))
    assert batch.status == "completed" and batch.request_counts.completed == len(bodies), batch
    lines = map(json.loads, client.files.content(batch.output_file_id).text.splitlines())
    return f, batch, {o["custom_id"]: o for o in lines}


def line(i, url="/v1/chat/completions"):
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Say {i}"}], "max_tokens": 4}
    return {"custom_id": f"q-{i}", "method": "POST", "url": url, "body": body}


lines = [line(i) for i in range(4)] + [line(99, url="/v1/completions")]
data = "".join(json.dumps(l) + "\n" for l in lines).encode()
# CONTRACT §15: the file expires an hour after its upload.
hour = {"anchor": "created_at", "seconds": 3600}
f = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch", expires_after=hour)
assert f.bytes == len(data) and f.purpose == "batch", f
assert f.expires_at == f.created_at + 3600, f
assert client.files.retrieve(f.id).id == f.id
assert client.files.content(f.id).content == data

batch = ended(client.batches.create(
    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "sdk"},
    output_expires_after={"anchor": "created_at", "seconds": 7200},
))
assert batch.status == "completed", batch
assert batch.request_counts.total == 5 and batch.request_counts.completed == 4, batch.request_counts
assert batch.metadata == {"run": "sdk"}, batch.metadata
# CONTRACT §15: the model the requests named, and the tokens the batch used, as OpenAI's types.
assert batch.model == "tiny", batch.model
u = batch.usage
assert u is not None and u.output_tokens > 0 and u.input_tokens > 0, u
assert u.total_tokens == u.input_tokens + u.output_tokens, u
assert u.input_tokens_details.cached_tokens >= 0 and u.output_tokens_details.reasoning_tokens == 0, u

webhook = None
if hooks is not None:
    # Events of other batches may come first (the API sends one for every batch that ends); each
    # must verify all the same.
    deadline = time.time() + 60
    while webhook is None or webhook.data.id != batch.id:
        try:
            body, headers = hooks.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            sys.exit(f"no webhook for batch {batch.id} within 60 s")
        webhook = client.webhooks.unwrap(body, headers, secret=webhook_secret)
    assert isinstance(webhook, BatchCompletedWebhookEvent) and webhook.type == "batch.completed", webhook
    assert webhook.object == "event" and webhook.id == headers["webhook-id"], webhook
    assert webhook.created_at == batch.completed_at, (webhook, batch.completed_at)

output = client.files.retrieve(batch.output_file_id)
assert output.expires_at == output.created_at + 7200, output
out = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
assert sorted(o["custom_id"] for o in out) == [f"q-{i}" for i in range(4)], out
assert all(o["response"]["body"]["object"] == "chat.completion" for o in out)
err = [json.loads(l) for l in client.files.content(batch.error_file_id).text.splitlines()]
assert [e["custom_id"] for e in err] == ["q-99"] and err[0]["error"]["code"] == "invalid_request", err

# CONTRACT §15: a /v1/responses batch; each output body parses as the SDK's own Response.
schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
responses = [
    {"model": "tiny", "input": "Say 1", "instructions": "Be brief.", "max_output_tokens": 3, "temperature": 0,
     "ignore_eos": True, "include": ["message.output_text.logprobs"], "top_logprobs": 2},
    {"model": "tiny", "input": [{"role": "developer", "content": "Answer in JSON."},
                                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "n?"}]}],
     "max_output_tokens": 40, "text": {"format": {"type": "json_schema", "name": "n", "schema": schema, "strict": True}}},
]
rf, _, rout = run_batch("/v1/responses", responses, "r")
cut = Response.model_validate(rout["r-0"]["response"]["body"])
assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens", cut
assert cut.output_text == cut.output[0].content[0].text and cut.usage.output_tokens == 3, cut
assert len(cut.output[0].content[0].logprobs) == 3 and cut.instructions == "Be brief.", cut
structured = Response.model_validate(rout["r-1"]["response"]["body"])
assert structured.object == "response" and structured.usage.total_tokens > 0, structured
if structured.status == "completed":
    assert isinstance(json.loads(structured.output_text)["n"], int), structured.output_text
client.files.delete(rf.id)

# CONTRACT §15: a /v1/embeddings batch; each output body parses as the SDK's own
# CreateEmbeddingResponse, base64 vectors (what the SDK asks for by default) equal float ones.
texts = ["The river bends twice.", "What is the capital of France?"]
embeds = [{"model": "tiny", "input": texts}, {"model": "tiny", "input": texts, "encoding_format": "base64"}]
ef, ebatch, eout = run_batch("/v1/embeddings", embeds, "e")
assert ebatch.usage.input_tokens > 0 and ebatch.usage.output_tokens == 0, ebatch.usage
floats = CreateEmbeddingResponse.model_validate(eout["e-0"]["response"]["body"])
assert floats.object == "list" and [d.index for d in floats.data] == [0, 1], floats
assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0, floats.usage
# On the wire a base64 embedding is a string, which the SDK's embeddings.create decodes
# (little-endian f32) before building the type; done here the same way.
packed = eout["e-1"]["response"]["body"]
for d in packed["data"]:
    raw = base64.b64decode(d["embedding"])
    d["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
packed = CreateEmbeddingResponse.model_validate(packed)
for d, p in zip(floats.data, packed.data):
    assert len(p.embedding) == len(d.embedding) and all(abs(a - b) < 1e-7 for a, b in zip(p.embedding, d.embedding))
    assert abs(sum(x * x for x in d.embedding) - 1.0) < 1e-4, "unit length"
client.files.delete(ef.id)

assert batch.id in [b.id for b in client.batches.list(limit=10)]
assert f.id in [x.id for x in client.files.list()]
try:
    client.batches.cancel(batch.id)
    raise AssertionError("a completed batch was cancelled")
except ConflictError:
    pass
assert client.files.delete(f.id).deleted
try:
    client.files.retrieve(f.id)
    raise AssertionError("a deleted file is still there")
except NotFoundError:
    pass
print(f"openai {__import__('openai').__version__}: batch {batch.id} completed, "
      f"{len(out)} outputs, {len(err)} error; a /v1/responses batch parsed as Response objects; "
      f"a /v1/embeddings batch parsed as CreateEmbeddingResponse ({len(floats.data[0].embedding)} dimensions); "
      f"list, cancel and delete as OpenAI's"
      + (f"; webhook {webhook.id} ({webhook.type}) verified by client.webhooks.unwrap" if webhook else ""))
