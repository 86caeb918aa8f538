"""The ipywidgets panel, headless: click its buttons, check the store and the provider changed."""

from __future__ import annotations

import pytest

from nexus_jupyter import SandboxManager
from nexus_jupyter.panel import SandboxPanel


@pytest.fixture
def panel(nx) -> SandboxPanel:
    made = SandboxPanel(nx, refresh_seconds=0)
    yield made
    made.close()


def cell_texts(panel: SandboxPanel) -> list[str]:
    return [child.value for child in panel.table.children if hasattr(child, "value")]


def test_the_panel_lists_sandboxes_made_anywhere(panel, nx, nexus):
    cli_made = nexus("sandbox", "create", "from-cli", "--json").json()["sandbox_id"]
    api_made = nx.sandbox_create("from-api")["sandbox_id"]
    panel.refresh_button.click()
    texts = cell_texts(panel)
    assert {cli_made, api_made, "from-cli", "from-api"} <= set(texts)
    assert texts.count("active") == 2


def test_pause_resume_and_stop_buttons_change_the_sandbox(panel, nx):
    sandbox = nx.sandbox_create("clicked")["sandbox_id"]
    backend = nx.provider(nx.sandbox_status(sandbox)["provider"])
    state = nx.store.get(sandbox)["provider_state"]
    panel.refresh()
    assert panel.buttons[("resume", sandbox)].disabled
    panel.buttons[("pause", sandbox)].click()
    assert nx.sandbox_status(sandbox)["status"] == "paused"
    assert backend.inspect(sandbox, state) == "paused"
    assert panel.buttons[("pause", sandbox)].disabled and not panel.buttons[("resume", sandbox)].disabled
    panel.buttons[("resume", sandbox)].click()
    assert backend.inspect(sandbox, state) == "active"
    panel.buttons[("stop", sandbox)].click()
    # Stop asks first: nothing happened yet
    assert panel.confirm_bar.layout.display == "flex" and sandbox in panel.confirm_text.value
    assert nx.sandbox_status(sandbox)["status"] == "active"
    panel.confirm_button.click()
    assert panel.confirm_bar.layout.display == "none"
    assert nx.sandbox_status(sandbox)["status"] == "stopped"
    assert backend.inspect(sandbox, state) == "stopped"
    assert sandbox not in cell_texts(panel)


def test_the_create_form_makes_a_sandbox(panel, nx):
    panel.name_input.value = "from-the-form"
    panel.ttl_input.value = 45
    panel.create_button.click()
    [record] = nx.sandbox_list()["sandboxes"]
    assert (record["name"], record["ttl_minutes"]) == ("from-the-form", 45)
    assert "Created sb_" in panel.message.value
    assert "from-the-form" in cell_texts(panel)


def test_errors_show_inline(panel, nx, data_dir):
    panel.name_input.value = ""
    panel.create_button.click()
    assert "Error: a sandbox name is required" in panel.message.value
    sandbox = nx.sandbox_create("stopped-elsewhere")["sandbox_id"]
    panel.refresh()
    SandboxManager(data_dir).sandbox_stop(sandbox)  # another process stops it first
    panel.buttons[("pause", sandbox)].click()
    assert f"Sandbox {sandbox} is stopped" in panel.message.value


def test_names_with_control_characters_are_shown_escaped(panel, nx):
    from nexus_jupyter.magics import SandboxTable

    nx.sandbox_create("evil\x1b[2J<b>bold</b>")
    panel.refresh()
    assert "evil\\x1b[2J&lt;b&gt;bold&lt;/b&gt;" in cell_texts(panel)
    table = SandboxTable(nx.sandbox_list()["sandboxes"])
    assert "\x1b" not in repr(table) and "evil\\x1b[2J" in repr(table)
    assert "\x1b" not in table._repr_html_() and "evil\\x1b[2J&lt;b&gt;" in table._repr_html_()


def test_cancel_keeps_the_sandbox(panel, nx):
    sandbox = nx.sandbox_create("kept")["sandbox_id"]
    panel.refresh()
    panel.buttons[("stop", sandbox)].click()
    panel.cancel_button.click()
    assert panel.confirm_bar.layout.display == "none"
    assert nx.sandbox_status(sandbox)["status"] == "active"


def live_widgets() -> int:
    # ipywidgets' registry of live widget models: what the kernel holds and a browser would load
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


def test_refreshing_updates_rows_in_place_and_leaks_no_widgets(nx):
    for name in ("a", "b", "c"):
        nx.sandbox_create(name)
    before = live_widgets()
    panel = SandboxPanel(nx, refresh_seconds=0)
    made = live_widgets() - before
    table = panel.table.children
    for _ in range(20):
        panel.refresh()
    assert live_widgets() - before == made  # a refresh every 5 s for an hour: still the same widgets
    assert panel.table.children == table
    # a sandbox stopped elsewhere: its row's widgets are closed, not left behind
    gone = nx.sandbox_list()["sandboxes"][0]["sandbox_id"]
    nx.sandbox_stop(gone)
    panel.refresh()
    assert live_widgets() - before < made and gone not in cell_texts(panel)
    panel.close()
    assert live_widgets() == before  # closing the panel closes all of it


def test_buttons_are_as_wide_as_their_labels(panel, nx):
    nx.sandbox_create("sized")
    panel.refresh()
    buttons = [*panel.buttons.values(), panel.refresh_button, panel.create_button, panel.confirm_button]
    assert {button.layout.width for button in buttons} == {"auto"}
