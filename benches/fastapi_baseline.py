"""The FastAPI baseline of the server bench (benches/server.rs): the original's stack.

It holds the same jobs' JSON in memory as plain dicts (what the original kept): the status
document of every job by id, and the job summaries newest first, loaded from the file named by
BASELINE_DATA ({"status": {id: document}, "summaries": [summary, ...]}). It answers
GET /status/{id} and GET /jobs?limit=&offset= with the same JSON our server answers, the way a
FastAPI app does: returning dicts that FastAPI encodes.

Run by the bench: python -m uvicorn fastapi_baseline:app --app-dir benches ...
"""

import json
import os

from fastapi import FastAPI, HTTPException

with open(os.environ["BASELINE_DATA"], encoding="utf-8") as f:
    _data = json.load(f)

STATUS = _data["status"]
SUMMARIES = _data["summaries"]
del _data

app = FastAPI()


@app.get("/status/{job_id}")
async def status(job_id: str):
    doc = STATUS.get(job_id)
    if doc is None:
        raise HTTPException(status_code=404, detail="unknown job")
    return doc


@app.get("/jobs")
async def jobs(limit: int = 50, offset: int = 0):
    if not 1 <= limit <= 1000 or offset < 0:
        raise HTTPException(status_code=400, detail="bad page")
    return {"jobs": SUMMARIES[offset : offset + limit], "total": len(SUMMARIES)}
