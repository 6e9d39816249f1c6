"""API keys on the dashboard (admin): list, create (the key shown once), revoke."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers.response import Response as BaseResponse

from api.api_keys import key_view
from api.dashboard.access import bp, describe, form, needs
from api.deps import principal, runtime
from api.schemas import ApiKeyCreate
from worker.access import cache, keys
from worker.base.errors import InvalidRequest


@bp.get("/keys")
@needs(keys.ADMIN)
def keys_page(**shown: Any) -> str:
    with runtime().db.autocommit() as db:
        listed = [key_view(k) for k in keys.keys_of(db, tenant_id=principal().tenant_id)]
    return render_template("dashboard/keys.html", keys=listed, all_scopes=keys.SCOPES,
                           mine=principal().key_id, **shown)


@bp.post("/keys")
@needs(keys.ADMIN)
def create_key() -> Any:
    try:
        body = form(ApiKeyCreate, name=request.form.get("name", "").strip(),
                    scopes=request.form.getlist("scopes"))
        with runtime().db.transaction() as db:
            token, record = keys.issue_key(db, tenant_id=principal().tenant_id,
                                           name=body.name, scopes=body.scopes)
            created = {"key": token, "prefix": record.prefix}
    except InvalidRequest as error:
        flash(describe(error), "error")
        return redirect(url_for("dashboard.keys_page"))
    return keys_page(new_key=created)


@bp.post("/keys/<key_id>/revoke")
@needs(keys.ADMIN)
def revoke_key(key_id: str) -> BaseResponse:
    rt = runtime()
    with rt.db.transaction() as db:
        revoked = keys.revoke(db, tenant_id=principal().tenant_id, key_id=key_id)
    cache.revoked(rt, revoked.id)
    if key_id == principal().key_id:  # signed in with it: that session ends here
        session.clear()
        return redirect(url_for("dashboard.sign_in"))
    flash("Key revoked: requests made with it are refused from now on.", "ok")
    return redirect(url_for("dashboard.keys_page"))
