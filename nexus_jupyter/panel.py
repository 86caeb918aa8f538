"""An ipywidgets panel of the user's sandboxes: ``nexus_jupyter.panel()`` or ``%sandbox panel``.

Lists name, id, provider, status, uptime and time left; Pause/Resume/Stop
per row; Refresh; a create form; errors shown inline, never swallowed.
It refreshes itself every few seconds while displayed.  The store is shared,
so sandboxes made anywhere (CLI, other notebooks, the server) show up.
"""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets

from .errors import SandboxError
from .formatting import duration, printable, seconds_left
from .manager import SandboxManager

COLUMNS = ("Name", "Sandbox ID", "Provider", "Status", "Uptime", "Time left", "")


def _time_left(record: dict) -> str:
    left = seconds_left(record)
    if left is None:
        return "paused" if record["status"] == "paused" else "-"
    return duration(left)


class SandboxPanel:
    """The panel's widgets and what its buttons do.  ``widget`` is what to display."""

    def __init__(
        self,
        manager: SandboxManager | None = None,
        refresh_seconds: float = 5.0,
        providers: tuple[str, ...] = ("local", "docker"),
    ):
        self.manager = manager or SandboxManager()
        self.refresh_seconds = refresh_seconds
        self.message = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh", tooltip="Refresh the list")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.name_input = widgets.Text(placeholder="name", layout=widgets.Layout(width="160px"))
        self.ttl_input = widgets.BoundedIntText(
            value=30, min=1, max=7 * 24 * 60, description="TTL (min)", layout=widgets.Layout(width="150px")
        )
        options = list(dict.fromkeys([self.manager.default_provider, *providers]))
        self.provider_input = widgets.Dropdown(options=options, value=options[0], layout=widgets.Layout(width="110px"))
        self.create_button = widgets.Button(description="Create", button_style="primary", icon="plus")
        self.create_button.on_click(lambda _: self.create())
        self.table = widgets.GridBox(
            layout=widgets.Layout(grid_template_columns="repeat(6, auto) 220px", grid_gap="2px 12px")
        )
        self.buttons: dict[tuple[str, str], widgets.Button] = {}
        self.widget = widgets.VBox(
            [
                widgets.HTML("<b>Sandboxes</b>"),
                widgets.HBox(
                    [self.refresh_button, self.name_input, self.ttl_input, self.provider_input, self.create_button]
                ),
                self.message,
                self.table,
            ]
        )
        self._stop = threading.Event()
        self.refresh()
        if refresh_seconds > 0:
            threading.Thread(target=self._auto_refresh, daemon=True).start()

    # ---- what the buttons do
    def refresh(self) -> None:
        try:
            records = self.manager.sandbox_list(verify_status=False)["sandboxes"]
        except SandboxError as exc:
            self.show_error(str(exc))
            return
        cells: list[widgets.Widget] = [widgets.HTML(f"<b>{column}</b>") for column in COLUMNS]
        self.buttons = {}
        for record in records:
            sandbox_id = record["sandbox_id"]
            cells += [
                widgets.HTML(html.escape(printable(value)))
                for value in (
                    record["name"],
                    sandbox_id,
                    record["provider"],
                    record["status"],
                    duration(record["uptime_seconds"]),
                    _time_left(record),
                )
            ]
            actions = []
            for verb, enabled in (
                ("Pause", record["status"] == "active"),
                ("Resume", record["status"] == "paused"),
                ("Stop", True),
            ):
                button = widgets.Button(
                    description=verb,
                    disabled=not enabled,
                    layout=widgets.Layout(width="68px"),
                    button_style="danger" if verb == "Stop" else "",
                )
                button.on_click(lambda _, verb=verb, sandbox_id=sandbox_id: self.act(verb.lower(), sandbox_id))
                self.buttons[(verb.lower(), sandbox_id)] = button
                actions.append(button)
            cells.append(widgets.HBox(actions))
        if not records:
            cells.append(widgets.HTML("<i>No sandboxes: create one above, or run a %%sandbox cell.</i>"))
        self.table.children = cells

    def act(self, verb: str, sandbox_id: str) -> None:
        """Pause, resume or stop one sandbox; errors are shown in the panel."""
        try:
            getattr(self.manager, f"sandbox_{verb}")(sandbox_id)
            self.message.value = ""
        except SandboxError as exc:
            self.show_error(str(exc))
        self.refresh()

    def create(self) -> None:
        try:
            record = self.manager.sandbox_create(
                self.name_input.value.strip(), ttl_minutes=self.ttl_input.value, provider=self.provider_input.value
            )
            self.message.value = f"Created {html.escape(record['sandbox_id'])}"
            self.name_input.value = ""
        except SandboxError as exc:
            self.show_error(str(exc))
        self.refresh()

    def show_error(self, text: str) -> None:
        self.message.value = f'<span style="color: #c62828">Error: {html.escape(printable(text))}</span>'

    # ---- keeping it current while displayed
    def _auto_refresh(self) -> None:
        # While the widget is open in the front end (closing it drops its comm).
        while not self._stop.wait(self.refresh_seconds) and self.widget.comm is not None:
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        self.widget.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def panel(manager: SandboxManager | None = None, refresh_seconds: float = 5.0) -> SandboxPanel:
    """The sandbox panel for a notebook (display it, or make it a cell's last value)."""
    return SandboxPanel(manager, refresh_seconds=refresh_seconds)
