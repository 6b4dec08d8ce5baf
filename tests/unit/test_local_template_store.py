"""The local backend's template directories (TemplateStore): removals that overlap, and what a
removal cut short leaves."""

from __future__ import annotations

import os
import threading
import time

from postgraas_server.backends import Credentials
from postgraas_server.backends.local.templates import ABANDONED_AFTER_S, DROPPING, TemplateStore

TENANT = Credentials("shop", "builder", "")


def frozen_in(store: TemplateStore, tmp_path, template_id: int) -> str:
    home = tmp_path / f"home-{template_id}"
    (home / "data" / "base").mkdir(parents=True)
    for i in range(200):
        (home / "data" / "base" / f"file-{i}").write_bytes(b"x" * 1000)
    return store.move_in(home, template_id, TENANT, run_as=None)


def remove_together(store: TemplateStore, artifact: str) -> list[BaseException]:
    """Two removals of ``artifact`` started at once; what they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def remove() -> None:
        start.wait()
        try:
            store.remove(artifact)
        except BaseException as e:  # the test reports whatever a removal raised
            errors.append(e)

    threads = [threading.Thread(target=remove) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_overlapping_removals_of_one_template_both_succeed(tmp_path):
    store = TemplateStore(tmp_path, "dep")
    for attempt in range(20):
        artifact = frozen_in(store, tmp_path, attempt)
        assert remove_together(store, artifact) == []
        assert store.list() == {}
    assert not store.area.exists()


def test_a_removal_cut_short_is_finished_by_a_later_one_and_a_young_one_is_left(tmp_path):
    store = TemplateStore(tmp_path, "dep")
    kept = frozen_in(store, tmp_path, 1)
    abandoned = store.area / f"{DROPPING}dep-7-{int(time.time()) - ABANDONED_AFTER_S - 5}-abcd1234"
    under_way = store.area / f"{DROPPING}dep-8-{int(time.time())}-abcd1234"
    for leftover in (abandoned, under_way):
        (leftover / "data").mkdir(parents=True)
    other_deployment = store.area / f"{DROPPING}other-9-{int(time.time()) - ABANDONED_AFTER_S - 5}-abcd1234"
    other_deployment.mkdir()
    store.remove(store.artifact_for(2))  # a template that is not there: only the sweep runs
    assert not abandoned.exists()
    assert under_way.exists() and other_deployment.exists()
    assert store.list() == {1: kept}
    assert os.listdir(store.area)
