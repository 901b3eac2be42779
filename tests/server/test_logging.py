"""The server log: the model workers' lines reach it (they are spawned processes with their own logging);
each answered interaction is logged with its id; no secrets and no image bytes, whatever the requests
carried (keys, data URLs, uploads, bad input)."""

from __future__ import annotations

import base64
import json

import requests

from tests.conftest import diagram_png

API_KEY = "apikey-Zq8vN3xK1mW7pR5t"
HF_TOKEN = "hf_SecretTokenAbCdEfGh12345678"
QDRANT_KEY = "qdrant-key-Lm4Nb6Vc8Xz0"
WRONG_KEY = "wrong-key-Yt5Re3Wq1Po9"


def test_the_log_has_interaction_ids_and_no_secrets_or_image_bytes(start_server) -> None:
    server = start_server(VISIONRAG_API_KEY=API_KEY, HF_TOKEN=HF_TOKEN, QDRANT_API_KEY=QDRANT_KEY)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    pngs = [diagram_png(300 + i) for i in range(4)]
    b64 = [base64.b64encode(p).decode() for p in pngs]
    urls = [f"data:image/png;base64,{b}" for b in b64]

    ids = []
    r = requests.post(
        server.url + "/predict",
        json={"image_url": urls[0], "user_query": "what is shown", "max_tokens": 3},
        headers=auth,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    ids.append(r.json()["id"])
    r = requests.post(
        server.url + "/predict",
        data={"user_query": "uploaded", "max_tokens": "3"},
        files={"image": ("d.png", pngs[1], "image/png")},
        headers={"X-API-Key": API_KEY},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    ids.append(r.json()["id"])
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": urls[2]}},
                ],
            }
        ],
        "max_tokens": 3,
        "stream": True,
    }
    with requests.post(
        server.url + "/v1/chat/completions", json=chat, headers=auth, stream=True, timeout=60
    ) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line and line != b"data: [DONE]"]
    ids.append(json.loads(events[-1][len(b"data: ") :])["interaction_id"])
    r = requests.post(
        server.url + "/history/search", json={"image_url": urls[3], "limit": 5}, headers=auth, timeout=60
    )
    assert r.status_code == 200, r.text
    # failures carry the same data too
    bad = urls[3][:-8] + "@@@@@@@@"
    r = requests.post(
        server.url + "/predict", json={"image_url": bad, "user_query": "q"}, headers=auth, timeout=60
    )
    assert r.status_code == 422
    r = requests.post(
        server.url + "/predict",
        json={"image_url": "data:text/plain;base64," + b64[0], "user_query": "q"},
        headers=auth,
        timeout=60,
    )
    assert 400 <= r.status_code < 500
    r = requests.get(server.url + "/history", headers={"Authorization": f"Bearer {WRONG_KEY}"}, timeout=10)
    assert r.status_code == 401
    server.stop()  # flush everything

    log = server.log_path.read_text(errors="replace")
    assert "visionrag.server.worker: worker" in log and "model loaded on cpu" in log, "no worker log line"
    for id in ids:
        assert id and f"interaction_id={id}" in log, f"no log line carries interaction {id}"
    for secret in (API_KEY, HF_TOKEN, QDRANT_KEY, WRONG_KEY):
        assert secret not in log, "a secret reached the server log"
    assert "iVBORw0KGgo" not in log, "base64 PNG data reached the server log"
    for b in b64:
        assert b[100:140] not in log
    raw = server.log_path.read_bytes()
    assert b"\x89PNG" not in raw and b"IDAT" not in raw
