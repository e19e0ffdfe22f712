"""An outside client of `dsbox serve`, written against the documented contract only
(docs/serve.md), with nothing but `requests`.

Usage: python3 client_test.py BASE_URL [--qrdata]

Exits 0 when every check passes; prints one line per check.
"""

import re
import sys

import requests

BASE = sys.argv[1].rstrip("/")
QRDATA = "--qrdata" in sys.argv[2:]
S = requests.Session()


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def post(path, **kw):
    return S.post(BASE + path, timeout=120, **kw)


def get(path):
    return S.get(BASE + path, timeout=120)


def execute(cid, code):
    r = post(f"/session/{cid}/execute", json={"code": code})
    check(r.status_code == 200, f"execute in container {cid}: HTTP {r.status_code}")
    return r.json()["outputs"]


def result(outputs):
    for o in outputs:
        if o["type"] == "result":
            return o["data"]["text/plain"]
    return None


# --- DSGym's manager API ---------------------------------------------------------
check(get("/health").json() == {"status": "ok"}, "GET /health")
status = get("/status").json()
check(
    set(status) >= {"available_containers", "available_by_type", "allocated_containers",
                    "total_containers", "allocated_container_ids"},
    "GET /status has the reference's keys",
)
before = status["allocated_containers"]

a = post("/allocate").json()["container_id"]
b = post("/allocate").json()["container_id"]
check(isinstance(a, int) and isinstance(b, int) and a != b, f"two integer ids: {a}, {b}")
status = get("/status").json()
check(status["allocated_containers"] == before + 2, "status counts both")
check(a in status["allocated_container_ids"] and b in status["allocated_container_ids"],
      "status lists both ids")

execute(a, "import pandas as pd\ndf = pd.DataFrame({'v': [1, 2, 3]})\ntotal = int(df.v.sum())")
out = execute(a, "print('sum is', total)\ntotal * 2")
check(out[0] == {"type": "stream", "name": "stdout", "text": "sum is 6\n"}, "stdout item")
check(out[1] == {"type": "result", "data": {"text/plain": "12"}}, "result item (state kept)")
out = execute(b, "total")
check(out[0]["type"] == "error" and out[0]["name"] == "NameError",
      "containers do not share state")
out = execute(a, "raise ValueError('bad value')")
check(out[0]["type"] == "error" and out[0]["value"] == "bad value"
      and isinstance(out[0]["traceback"], list), "error item")
r = post(f"/session/{a}/execute", json={"code": "import time\ntime.sleep(20)", "timeout": 1})
err = r.json()["outputs"][-1]
check(err["type"] == "error" and err["name"] == "TimeoutError", "timeout → TimeoutError item")
check(result(execute(a, "1 + 1")) == "2", "the container works after a timeout")

r = post(f"/deallocate/{a}")
check(r.status_code == 200 and r.json() == {"status": "deallocated", "container_id": a},
      "deallocate")
r = post(f"/session/{a}/execute", json={"code": "1"})
check(r.status_code == 400 and "not allocated" in r.json()["error"],
      "execute after deallocate → 400 naming the problem")
check(post(f"/deallocate/{a}").status_code == 400, "deallocate twice → 400")
post(f"/deallocate/{b}")
status = get("/status").json()
check(status["allocated_containers"] == before, "status counts back down")
check(a not in status["allocated_container_ids"], "the id is gone")
r = post("/allocate?container_type=no-such-type")
check(r.status_code == 400, "unknown container_type → 400")
r = post("/session/1/execute", data="{not json", headers={"Content-Type": "application/json"})
check(r.status_code == 400 and r.json()["kind"] == "bad_json", "malformed JSON → 400 JSON error")


# --- the env API ------------------------------------------------------------------
def episode(task_id, code, answer_of):
    """One env: run `code`, answer with answer_of(printed text); return the reward."""
    r = post("/v1/envs", json={"task_id": task_id})
    check(r.status_code == 201, f"create env for {task_id}: HTTP {r.status_code} {r.text[:200]}")
    env = r.json()
    roles = [m["role"] for m in env["messages"]]
    check(roles == ["system", "user"], f"{task_id}: system + user prompt")
    eid = env["env_id"]
    r = post(f"/v1/envs/{eid}/step", json={"action": f"<python>\n{code}\n</python>"}).json()
    check(r["done"] is False and r["reward"] == 0.0, f"{task_id}: code step not done")
    text = r["observations"][0]["content"]
    m = re.search(r"\[stdout\] (.*)", text)
    check(m is not None, f"{task_id}: output came back: {text[:120]!r}")
    r = post(f"/v1/envs/{eid}/step",
             json={"action": f"<answer>{answer_of(m.group(1).strip())}</answer>"}).json()
    check(r["done"] is True, f"{task_id}: answer ends the episode")
    S.delete(f"{BASE}/v1/envs/{eid}", timeout=60)
    return r["reward"]


region = "import pandas as pd\ndf = pd.read_csv('/data/starter/sales.csv')\nprint(df.groupby('region')['revenue'].sum().idxmax())"
check(episode("starter/top-region", region, lambda x: x) == 1.0, "starter: right answer → 1.0")
check(episode("starter/top-region", region, lambda x: "Nowhere") == 0.0,
      "starter: wrong answer → 0.0")

if QRDATA:
    # QRData 0: the share of treated patients with a stroke after 365 days (answer 0.20).
    stent = ("import pandas as pd\nd = pd.read_csv('/data/qrdata/data/stent365.csv')\n"
             "t = d[d.group == 'treatment']\nprint(round((t.outcome == 'stroke').mean(), 2))")
    check(episode("qrdata/0", stent, lambda x: x) == 1.0, "QRData: right answer → 1.0")
    check(episode("qrdata/0", stent, lambda x: str(float(x) + 0.1)) == 0.0,
          "QRData: wrong answer → 0.0")

print("all checks passed", flush=True)
