"""Two creates of the same new group at the same moment: the loser is told what exists, never a 502.

Azure DevOps keeps group names unique per project. A second create of the same name fails with typeKey
``VariableGroupExistsException``; the service's exception map answers it with 409 Conflict (Azure DevOps
Server's TaskHttpExceptionMapper: ``AddStatusCode<VariableGroupExistsException>(HttpStatusCode.Conflict)``;
a live note in a public Azure DevOps MCP server, 2026-08-26, saw 409 too), while the report in issue 21
saw ``HTTP 400: Variable group with name ... already exists.`` -- so both statuses are tried here.
"""

from __future__ import annotations

import io
import json
import threading

import azure.functions as func
import pytest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.cli import main as cli_main

pytestmark = pytest.mark.integration


@pytest.fixture(params=[409, 400], ids=["409-conflict", "400-already-exists"])
def duplicate_status(request, devops_server, monkeypatch):
    monkeypatch.setattr(devops_server, "duplicate_name_status", request.param)
    return request.param


def two_instances(estate, monkeypatch):
    """Two engines (two Function instances), each thread on its own; both POSTs wait for each other.

    The barrier sits just before the create: both have looked the group up and found nothing, so
    both send the POST, and Azure DevOps (the stand-in, atomically) takes one of them.
    """
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    engines = [estate.engine(), estate.engine()]
    barrier = threading.Barrier(2, timeout=30)
    for engine in engines:
        create = engine.devops.create_group

        def create_together(organization, parameters, _create=create):
            barrier.wait()
            return _create(organization, parameters)

        monkeypatch.setattr(engine.devops, "create_group", create_together)
    mine = threading.local()
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: mine.engine)
    return engines, mine


def run_both(engines, mine, call):
    results: list = [None, None]
    errors: list = []

    def run(i: int) -> None:
        mine.engine = engines[i]
        try:
            results[i] = call()
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def post_link(body):
    request = func.HttpRequest(
        method="POST", url="http://localhost/api/links", body=json.dumps(body).encode(), route_params={}
    )
    response = function_app.links(request)
    return response.status_code, json.loads(response.get_body())


def groups_named(estate, name):
    return [g for g in estate.ado.groups(estate.org) if g["name"] == name]


def test_two_api_creates_end_with_one_group_one_link_and_two_answers(estate, monkeypatch, duplicate_status):
    """One caller gets 201 (created), the other 200 (adopted, the same group): one group, one link record."""
    estate.kv.set_secret(estate.vault, "db-password")
    estate.kv.set_secret(estate.vault, "api-key")
    engines, mine = two_instances(estate, monkeypatch)

    answers = run_both(engines, mine, lambda: post_link(estate.link_body()))

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 201], answers
    (group,) = groups_named(estate, "payments-kv")
    assert {body["link"]["groupId"] for _, body in answers} == {group["id"]}
    adopted = next(body for status, body in answers if status == 200)
    assert adopted["created"] is False and adopted["link"]["vault"] == estate.vault
    assert estate.names(group["id"]) == ["api-key", "db-password"]
    assert [link.group_id for link in engines[0].registry.list_links(vault=estate.vault)] == [group["id"]]


def test_someone_elses_group_of_that_name_is_a_409_that_says_what_exists(estate, monkeypatch, duplicate_status):
    """A person creates a group of the same name on another vault meanwhile: 409 with its id, type and vault."""
    estate.kv.set_secret(estate.vault, "db-password")
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    engine = estate.engine()
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    create = engine.devops.create_group
    theirs: list[int] = []

    def someone_is_faster(organization, parameters):
        theirs.append(estate.group("payments-kv", ["their-secret"], vault="kv-elsewhere"))
        return create(organization, parameters)

    monkeypatch.setattr(engine.devops, "create_group", someone_is_faster)

    status, body = post_link(estate.link_body())

    assert status == 409, body
    error = body["error"]
    assert error["code"] == "GroupExists" and error["field"] == "group"
    assert error["existing"]["groupId"] == theirs[0]
    assert error["existing"]["type"] == "AzureKeyVault" and error["existing"]["vault"] == "kv-elsewhere"
    assert str(theirs[0]) in error["message"]
    (group,) = groups_named(estate, "payments-kv")
    assert group["id"] == theirs[0] and estate.names(theirs[0]) == ["their-secret"]  # untouched
    assert engine.registry.list_links(vault=estate.vault) == []


def test_two_cli_links_at_once(estate, monkeypatch, duplicate_status):
    """The same race through `kvlink link`: both exit 0, one created the group and one adopted it."""
    estate.kv.set_secret(estate.vault, "db-password")
    engines, mine = two_instances(estate, monkeypatch)

    def link():
        out, err = io.StringIO(), io.StringIO()
        return cli_main(estate.link_argv("--json"), out=out, err=err), out.getvalue(), err.getvalue()

    results = run_both(engines, mine, link)

    assert [code for code, _, _ in results] == [0, 0], results
    bodies = [json.loads(out) for _, out, _ in results]
    assert sorted(b["created"] for b in bodies) == [False, True]
    (group,) = groups_named(estate, "payments-kv")
    assert {b["link"]["groupId"] for b in bodies} == {group["id"]}
    assert len(engines[1].registry.list_links(vault=estate.vault)) == 1
