"""``agentq dev``: the whole platform on one machine, with nothing installed but Python.

With no ``DATABASE_URL`` / ``REDIS_URL``, a real PostgreSQL and a real Redis start with
their data under ``./.agentq/`` (``AGENTQ_DATA_DIR``). Then the migrations run, a
development API key is made (or the last one reused), and honcho runs the API, a worker,
beat and Flower until Ctrl-C, which stops every process started here.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from contextlib import ExitStack
from pathlib import Path

from honcho.manager import Manager
from honcho.printer import Printer

from agentq import migrate
from agentq.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.access import keys
from worker.base.db import Database
from worker.base.settings import DevSettings, load_database_settings

DEV_TENANT = "dev"
DEV_WEBHOOK_CIDRS = "127.0.0.0/8,::1/128"


def _bin(name: str) -> str:
    """The console script ``name`` installed beside this Python (works without activation)."""
    return shlex.quote(str(Path(sys.executable).parent / name))


def processes(dev: DevSettings, data_dir: Path) -> dict[str, str]:
    """The commands ``agentq dev`` runs; the Procfile runs the same with production flags."""
    celery = f"{_bin('celery')} -A worker"
    return {
        "web": f"{_bin('gunicorn')} --bind 127.0.0.1:{dev.port} --worker-class gevent "
               "--workers 1 --worker-connections 2000 --graceful-timeout 10 'api:create_app()'",
        "worker": f"{celery} worker --loglevel INFO --queues "
                  "runs.high,runs.normal,runs.low,maintenance --pool threads --concurrency 2 "
                  "--hostname dev-worker@%h",
        "cpu": f"{celery} worker --loglevel INFO --queues cpu --pool prefork --concurrency 1 "
               "--hostname dev-cpu@%h",
        "notifier": f"{celery} worker --loglevel INFO --queues notify --pool threads "
                    "--concurrency 8 --hostname dev-notifier@%h",
        "beat": f"{celery} beat --loglevel INFO "
                f"--schedule {shlex.quote(str(data_dir / 'celerybeat-schedule'))}",
        "flower": f"{celery} flower --address=127.0.0.1 --port={dev.flower_port}",
    }


def dev_key(database_url: str, key_file: Path) -> str:
    """Reuse the development key kept in ``key_file`` if it still works, else make one."""
    db = Database(load_database_settings(database_url=database_url))
    try:
        with db.transaction() as session:
            if key_file.exists():
                token = key_file.read_text().strip()
                if keys.authenticate(session, token=token) is not None:
                    return token
            tenant = keys.ensure_tenant(session, name=DEV_TENANT)
            token = keys.create_key(session, tenant=tenant, name="agentq dev")
        key_file.write_text(token + "\n")
        key_file.chmod(0o600)
        return token
    finally:
        db.dispose()


def _services(dev: DevSettings, data_dir: Path, stack: ExitStack) -> tuple[str, str]:
    database_url, redis_url = dev.database_url, dev.redis_url
    if database_url is None:
        postgres = EmbeddedPostgres(data_dir / "postgres")
        database_url = postgres.start()
        stack.callback(postgres.stop)
        _say(f"PostgreSQL  embedded, data in {postgres.root} (127.0.0.1:{postgres.port})")
    else:
        _say("PostgreSQL  from DATABASE_URL")
    if redis_url is None:
        redis_server = EmbeddedRedis(data_dir / "redis")
        redis_url = redis_server.start()
        stack.callback(redis_server.stop)
        _say(f"Redis       embedded, data in {redis_server.root} (127.0.0.1:{redis_server.port})")
    else:
        _say("Redis       from REDIS_URL")
    return database_url, redis_url


def run(dev: DevSettings) -> int:
    """Start everything, block until Ctrl-C (or a process dies), stop everything."""
    data_dir = dev.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        database_url, redis_url = _services(dev, data_dir, stack)
        migrate.upgrade(database_url)
        token = dev_key(database_url, data_dir / "dev-api-key")
        env = {
            **os.environ,  # forwarded to the children, which read their settings from it
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
        }
        # Local receivers are the point of a dev box: allow loopback unless told otherwise.
        env.setdefault("AGENTQ_WEBHOOK_ALLOWED_CIDRS", DEV_WEBHOOK_CIDRS)
        env.setdefault("AGENTQ_SECRET_KEY", dev_secret(data_dir / "secret-key"))
        _write_env(data_dir / "env", DATABASE_URL=database_url, REDIS_URL=redis_url,
                   AGENTQ_SECRET_KEY=env["AGENTQ_SECRET_KEY"])  # for an API started by hand
        _banner(dev, token, data_dir, env["AGENTQ_WEBHOOK_ALLOWED_CIDRS"])
        manager = Manager(Printer(sys.stdout))
        for name, command in processes(dev, data_dir).items():
            manager.add_process(name, command, env=env)
        manager.loop()
        _say("stopping the embedded servers…")
        # Stopped by Ctrl-C or SIGTERM is a normal end; otherwise pass on the failed child's code.
        return 0 if manager.returncode in (None, 130, 143) else int(manager.returncode)
    return 0


def dev_secret(path: Path) -> str:
    """The dashboard's cookie-signing secret on this dev box: made once, kept (mode 0600)
    so sign-ins survive a restart."""
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secret + "\n")
    return secret


def _write_env(path: Path, **variables: str) -> None:
    """Keep the servers' URLs for other shells (``export $(cat .agentq/env)``); mode 0600."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))


def _banner(dev: DevSettings, token: str, data_dir: Path, webhook_cidrs: str) -> None:
    env_file = os.path.relpath(data_dir / "env")
    _say("")
    _say(f"API         http://127.0.0.1:{dev.port}")
    _say(f"Dashboard   http://127.0.0.1:{dev.port}/  (sign in with the API key below)")
    _say(f"Flower      http://127.0.0.1:{dev.flower_port}")
    _say(f"API key     {token}")
    _say(f"Shell       export KEY={token}")
    _say(f"            export $(cat {env_file})   # for celery, alembic and agentq commands")
    _say(f"Webhooks    may reach {webhook_cidrs} (AGENTQ_WEBHOOK_ALLOWED_CIDRS; production "
         "allows public addresses only)")
    _say("Ctrl-C stops every process started here; data stays for the next `make dev`.")
    _say("")


def _say(line: str) -> None:
    print(f"agentq | {line}", flush=True)
