"""Every Redis key the service uses, named here and only here, with its lifetime beside it.

A batch's own keys share the hash tag `{<batch id>}`, so they live in one cluster slot and one
Lua script may touch them together. A batch's own keys live until it is deleted, or until
`PROMPTBATCH_RESULT_TTL_S` after it became final (every one of them is then given that expiry).
"""

from __future__ import annotations

PREFIX = "pb"

#: The job queue arq serves (its layout is arq's). arq's per-job keys (a job's record, its
#: claim while it runs, its try count) are arq's own names, derived in `shared/jobs.py`.
QUEUE = f"{PREFIX}:queue"

#: Hash: worker id -> `<busy> <max>`, its arq job slots running a chunk and its `max_jobs`,
#: stated on each heartbeat; fields of workers no longer alive are ignored and pruned.
WORKER_SLOTS = f"{PREFIX}:worker-slots"
#: Hash: worker id -> the providers it runs, comma-separated, stated on each heartbeat (a chunk
#: of a provider its worker lacks goes back to the queue while another alive worker has it).
WORKER_PROVIDERS = f"{PREFIX}:worker-providers"

#: Sorted set: worker id -> last heartbeat (epoch ms). Members older than the liveness window
#: are pruned by whoever reads it; the set itself never expires.
WORKERS = f"{PREFIX}:workers"

#: Sorted set: ids of batches not yet final, scored by creation time (epoch µs). The reconciler
#: walks it to re-queue work that is on no queue, and drops batches once they are final.
ACTIVE = f"{PREFIX}:active"

#: String: which worker is reconciling now; expires after one reconcile period.
RECONCILE_LOCK = f"{PREFIX}:reconcile-lock"

#: Owner of batches when the API runs without keys (local development).
PUBLIC_OWNER = "public"


def batch(batch_id: str) -> str:
    """Hash: the batch's fields and counters (status, counts, usage, timestamps)."""
    return f"{PREFIX}:{{{batch_id}}}:batch"


def inputs(batch_id: str) -> str:
    """List: one JSON `[custom_id, prompt or messages]` per item (with its own params as a
    third element when it has any), in input order. Written once at submit: a large
    submission's page by page before its batch exists, expiring unless the batch is created
    (`shared/staging.py`)."""
    return f"{PREFIX}:{{{batch_id}}}:inputs"


def custom_ids(batch_id: str) -> str:
    """List: each item's custom_id, in input order, written with `inputs`: a results page reads
    these, never the prompts."""
    return f"{PREFIX}:{{{batch_id}}}:ids"


def results(batch_id: str) -> str:
    """Hash: item index -> JSON result. Each field is written once (HSETNX), never changed."""
    return f"{PREFIX}:{{{batch_id}}}:results"


def chunks(batch_id: str) -> str:
    """Hash: chunk number -> how many of its items are final (the reconciler skips full ones)."""
    return f"{PREFIX}:{{{batch_id}}}:chunks"


def attempts(batch_id: str) -> str:
    """Hash: `<chunk>:<run token>` for each run of a chunk that started and has not ended
    (runs whose worker died stay)."""
    return f"{PREFIX}:{{{batch_id}}}:attempts"


def slots(batch_id: str) -> str:
    """Hash: worker id -> `held:expires_ms:wanted`, the batch's concurrency shared out between
    workers. Each field lapses at its own expiry; the key expires with its last holder."""
    return f"{PREFIX}:{{{batch_id}}}:slots"


def feeding(batch_id: str) -> str:
    """Set: the batch's chunks whose runs still have items to start (queued, or running and not
    yet drained): the batch's share of the fleet, bounded by its window
    (`shared/scheduler.py`). Kept with the batch's other keys."""
    return f"{PREFIX}:{{{batch_id}}}:feeding"


def redo(batch_id: str) -> str:
    """Sorted set: chunks dispatched once that must run again (retried in place, or found on no
    queue by the reconciler), scored by chunk number; dispatched before the batch's cursor
    moves on. Kept with the batch's other keys."""
    return f"{PREFIX}:{{{batch_id}}}:redo"


def events(batch_id: str) -> str:
    """Stream: the batch's progress (status changes, item completions), capped at about
    `EVENTS_MAXLEN` entries; its entry ids are the `id:`s of the SSE events stream."""
    return f"{PREFIX}:{{{batch_id}}}:events"


def batch_keys(batch_id: str) -> tuple[str, ...]:
    """Every key that belongs to one batch, in the order the batch scripts take them."""
    return (
        batch(batch_id),
        inputs(batch_id),
        results(batch_id),
        chunks(batch_id),
        attempts(batch_id),
        slots(batch_id),
        events(batch_id),
        feeding(batch_id),
        redo(batch_id),
        custom_ids(batch_id),
    )


#: The KEYS of every batch script (`shared/lua/`), by the names the scripts give them: the
#: batch's own keys in `batch_keys` order, then `STATS`. `batch_script_keys` lists them.
BATCH_SCRIPT_KEYS = (
    "meta", "inputs", "results", "chunks", "attempts", "slots", "events", "feeding", "redo",
    "ids", "stats", "outbox",
)  # fmt: skip


def batch_script_keys(batch_id: str) -> list[str]:
    """KEYS of a batch script: the batch's own keys, the service-wide counters, the outbox."""
    return [*batch_keys(batch_id), STATS, OUTBOX]


#: Entries a batch's events stream keeps (approximately): enough to resume a watcher that
#: fell behind by seconds; one that fell further behind still gets the current state first.
EVENTS_MAXLEN = 10_000

#: Hash: service-wide counters for /metrics, e.g. `items:succeeded`, `batches:completed`,
#: `tokens:input`, and the workers' provider-call latency buckets. Never expires.
STATS = f"{PREFIX}:stats"


#: Stream: the outbox of webhook events. The script that makes a batch final adds one entry
#: (`batch`, `owner`, `status`, `at`), so no event is lost to a crash. Workers read it through
#: the consumer group `WEBHOOK_GROUP` and delete an entry once its deliveries are scheduled
#: (none, for an owner without endpoints). Never expires.
OUTBOX = f"{PREFIX}:webhooks:outbox"
WEBHOOK_GROUP = "deliverers"


def webhooks(owner: str) -> str:
    """Hash: an owner's webhook endpoints, endpoint id -> JSON (url, events, secret, created).
    Never expires; gone when its last endpoint is deleted."""
    return f"{PREFIX}:{{{owner}}}:webhooks"


def webhook_due(owner: str) -> str:
    """Sorted set: an owner's webhook deliveries to make, delivery id -> when its next attempt
    is due (epoch ms, Redis's clock). While a worker sends an attempt, the score is when that
    worker's lease on it ends, so an attempt whose worker died is made again then. A member
    leaves when its delivery is done (a 2xx), given up, or found gone. Never expires; gone
    when empty."""
    return f"{PREFIX}:{{{owner}}}:webhooks:due"


#: Sorted set: the owners with webhook deliveries to make, owner -> the earliest score in their
#: `webhook_due` set, or when a sender last took one of theirs if that is later (kept so by
#: every script that changes one). Senders deal their send slots over these owners in that
#: order: an owner just served waits behind those waiting since before, so one owner's pile
#: of deliveries never hides another's.
WEBHOOK_OWNERS = f"{PREFIX}:webhooks:owners"

#: Hash: owner -> when a sender last took one of its webhook deliveries (epoch ms, Redis's
#: clock), for `WEBHOOK_OWNERS`' order. An owner leaves it with its last delivery.
WEBHOOK_SERVED = f"{PREFIX}:webhooks:served"

#: Sorted set: every owner's deliveries in one, as workers before per-owner sets kept them
#: (delivery id -> due). Workers move what an older worker still schedules here to its owner's
#: set (`worker/webhooks.py`); it is empty once no older worker runs.
LEGACY_WEBHOOK_DUE = f"{PREFIX}:webhooks:due"


def webhook_delivery(delivery_id: str) -> str:
    """Hash: one event's delivery to one endpoint (delivery id `<event id>:<endpoint id>`):
    `owner`, `endpoint`, `type`, `msg` (its `webhook-id`), `body` (the signed JSON), `attempts`,
    `first_at` (epoch ms of its first attempt). Deleted when done or given up; expires in any
    case `PROMPTBATCH_WEBHOOK_RETRY_S` and a day after it was scheduled (and again after its
    first attempt)."""
    return f"{PREFIX}:webhooks:delivery:{delivery_id}"


def pacing(model: str) -> str:
    """Hash: one model's provider pacing, shared by every worker (`worker/pacing.py`): its
    request and token buckets, learned limits, 429 wait. Expires an hour after its last use."""
    return f"{PREFIX}:pacing:{model}"


def idempotency(owner: str, key_hash: str) -> str:
    """String: `<batch id> <request hash>` for an `Idempotency-Key` (stored as its SHA-256);
    expires after `PROMPTBATCH_IDEMPOTENCY_TTL_S`."""
    return f"{PREFIX}:idem:{owner}:{key_hash}"


def batch_index(owner: str) -> str:
    """Sorted set: an owner's batch ids scored by creation time (epoch µs), for listing."""
    return f"{PREFIX}:index:{owner}"


#: Batches an owner's `departed` set remembers, newest first, and for how long after the last.
DEPARTED_MAX = 1000
DEPARTED_TTL_MS = 24 * 3600 * 1000


def departed(owner: str) -> str:
    """Sorted set: ids of an owner's batches lately deleted or expired, scored as in the index,
    so that a listing `after` one of them goes on where it was. Keeps the newest
    `DEPARTED_MAX`; expires `DEPARTED_TTL_MS` after the last one left."""
    return f"{PREFIX}:departed:{owner}"


def job_id(batch_id: str, chunk: int) -> str:
    """Job id of one chunk of a batch: deterministic, so enqueueing twice is a no-op."""
    return f"{batch_id}:{chunk}"


# -- batches handed to the provider's Batch API (worker/handoff.py) ---------------------------


def handoff(batch_id: str, chunk: int) -> str:
    """Hash: a chunk of a `provider_batch` batch at the provider: `parts` (JSON: the item index
    ranges of its provider batches), and for part `<p>` its `<p>:nonce` (written before its
    provider batch is created, which carries it in its metadata), `<p>:file` and `<p>:batch`
    (the provider's ids, once known), `<p>:done` (its results written). Shares the batch's hash
    tag; expires with the batch's results, and is cleared when a retry runs the chunk again."""
    return f"{PREFIX}:{{{batch_id}}}:handoff:{chunk}"


# -- files of the OpenAI surface (shared/files.py) ----------------------------------------------
# A file's two keys share the hash tag `{<file id>}`; both expire with the file.


def file(file_id: str) -> str:
    """Hash: an uploaded file's fields (owner, filename, purpose, bytes, lines, times)."""
    return f"{PREFIX}:{{{file_id}}}:file"


def file_pieces(file_id: str) -> str:
    """List: an uploaded file's bytes, in pieces of whole lines of about a megabyte."""
    return f"{PREFIX}:{{{file_id}}}:pieces"


def files(owner: str) -> str:
    """Sorted set: an owner's file ids, all scored 0 so that they sort by name, which is by
    when each was made; an entry whose file expired is pruned when a listing meets it, and
    the set expires when the last file uploaded to it would have (30 days, or the TTL)."""
    return f"{PREFIX}:files:{owner}"


# -- the scheduler (shared/scheduler.py) ---------------------------------------------------------
# An owner's two keys share the hash tag `{<owner>}`; both empty out (and so vanish) by themselves.


#: String: the queue score the scheduler gave the job it dispatched last (epoch ms, to the
#: hundredth); the next one gets a later one, so jobs dispatched in one millisecond keep their
#: order on the queue. Never expires.
SCHED_CLOCK = f"{PREFIX}:sched:clock"


def rotation(owner: str) -> str:
    """Sorted set: the owner's batches that may take another job slot, in turn order (score:
    an increasing turn number). A batch leaves it when it is dispatched or found unable to
    use more, and joins again at the back when one of its runs starts, drains or ends."""
    return f"{PREFIX}:{{{owner}}}:rotation"


def heads(owner: str) -> str:
    """Set: the owner's chunk jobs on the queue that no worker has taken yet (at most
    `scheduler.HEADS_PER_OWNER`); members taken or gone are pruned whenever it is read."""
    return f"{PREFIX}:{{{owner}}}:heads"


def template(key: str, name: str) -> str:
    """A key of this module with `%s` in place of `name`, for Lua's `string.format`."""
    if "%" in key:
        raise ValueError(f"a key with % in it: {key!r}")
    return key.replace(name, "%s")


# -- per-key limits (api/admission.py) -----------------------------------------------------------
# An owner is `public` or the hash of an API key (never the key). The three keys share the
# hash tag `{<owner>}`.

#: The sliding window of the rate limit: a submission's entry counts for this long.
RATE_WINDOW_MS = 60_000

#: How long an upload in progress counts against its owner's cap unless it ends first.
UPLOAD_TTL_MS = 10 * 60 * 1000

#: How long a reservation of queue room may wait for its batch to be stored before it lapses:
#: as long as a large submission may take to be staged.
RESERVATION_TTL_MS = UPLOAD_TTL_MS

#: An owner's set of active batch ids lives this long after its last submission.
ACTIVE_TTL_MS = 7 * 24 * 3600 * 1000


def submissions(owner: str) -> str:
    """Sorted set: an owner's submissions of the last minute (member: token, score: epoch ms).
    Expires `RATE_WINDOW_MS` after the last one."""
    return f"{PREFIX}:{{{owner}}}:submissions"


def active_batches(owner: str) -> str:
    """Set: ids of an owner's batches that may still have prompts not final. Finished or gone
    ones are pruned at the owner's next submission; expires `ACTIVE_TTL_MS` after the last."""
    return f"{PREFIX}:{{{owner}}}:active"


def streams(owner: str) -> str:
    """Sorted set: an owner's open event streams (member: token, score: epoch ms it lapses
    unless renewed, `api/streams.py`). Expires one lease after the last renewal."""
    return f"{PREFIX}:{{{owner}}}:streams"


def uploads(owner: str) -> str:
    """Sorted set: an owner's large submissions being staged now (member: token, score: epoch
    ms begun); entries older than `UPLOAD_TTL_MS` are pruned. Expires one TTL after the last."""
    return f"{PREFIX}:{{{owner}}}:uploads"


def reservations(owner: str) -> str:
    """Hash: reservation token -> `<prompts>:<expiry epoch ms>`, room held for a batch being
    stored. A lapsed entry is ignored and pruned; the hash expires `RESERVATION_TTL_MS` after
    the last write."""
    return f"{PREFIX}:{{{owner}}}:reservations"
