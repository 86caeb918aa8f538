"""An ipywidgets panel of the user's sandboxes: ``nexus_jupyter.panel()`` or ``%sandbox panel``.

Lists name, id, provider, status, uptime and time left; Pause/Resume/Stop
per row (Stop asks first); Refresh; a create form; errors shown inline, never
swallowed.  Refreshes update the rows' widgets in place: the number of widgets
stays that of the rows shown, however long the panel lives.
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
from .providers.base import provider_names

COLUMNS = ("Name", "Sandbox ID", "Provider", "Status", "Uptime", "Time left", "")
VERBS = ("pause", "resume", "stop")


def _time_left(record: dict) -> str:
    left = seconds_left(record)
    if left is None:
        return "paused" if record["status"] == "paused" else "-"
    return duration(left)


class _Row:
    """One sandbox's widgets: made once, then updated in place by every refresh
    (a refresh that made new widgets would leave the old ones open in the
    kernel and in the browser, and a reloaded page would have to load them all)."""

    def __init__(self, panel: SandboxPanel, sandbox_id: str):
        self.labels = [widgets.HTML() for _ in COLUMNS[:-1]]
        self.buttons = {}
        for verb in VERBS:
            button = widgets.Button(
                description=verb.capitalize(),
                button_style="danger" if verb == "stop" else "",
                layout=widgets.Layout(width="auto"),  # as wide as its label
            )
            button.on_click(lambda _, verb=verb: panel.act(verb, sandbox_id))
            self.buttons[verb] = button
        self.actions = widgets.HBox(list(self.buttons.values()))

    @property
    def cells(self) -> list[widgets.Widget]:
        return [*self.labels, self.actions]

    def show(self, record: dict) -> None:
        values = (
            record["name"],
            record["sandbox_id"],
            record["provider"],
            record["status"],
            duration(record["uptime_seconds"]),
            _time_left(record),
        )
        for label, value in zip(self.labels, values, strict=True):
            text = html.escape(printable(value))
            if label.value != text:  # an unchanged value sends nothing to the browser
                label.value = text
        self.buttons["pause"].disabled = record["status"] != "active"
        self.buttons["resume"].disabled = record["status"] != "paused"

    def close(self) -> None:
        _close(self.actions)
        for label in self.labels:
            _close(label)


class SandboxPanel:
    """The panel's widgets and what its buttons do.  ``widget`` is what to display."""

    def __init__(
        self,
        manager: SandboxManager | None = None,
        refresh_seconds: float = 5.0,
        providers: tuple[str, ...] | None = None,
    ):
        self.manager = manager or SandboxManager()
        self.refresh_seconds = refresh_seconds
        self.message = widgets.HTML()
        self.refresh_button = widgets.Button(
            description="Refresh", icon="refresh", tooltip="Refresh the list", layout=widgets.Layout(width="auto")
        )
        self.refresh_button.on_click(lambda _: self.refresh())
        self.name_input = widgets.Text(placeholder="name", layout=widgets.Layout(width="160px"))
        self.ttl_input = widgets.BoundedIntText(
            value=30, min=1, max=7 * 24 * 60, description="TTL (min)", layout=widgets.Layout(width="150px")
        )
        # The choices are every provider installed (built in, or a plugin's entry point).
        options = list(dict.fromkeys([self.manager.default_provider, *(providers or provider_names())]))
        self.provider_input = widgets.Dropdown(options=options, value=options[0], layout=widgets.Layout(width="110px"))
        self.create_button = widgets.Button(
            description="Create", button_style="primary", icon="plus", layout=widgets.Layout(width="auto")
        )
        self.create_button.on_click(lambda _: self.create())
        # Stop destroys a sandbox: it asks first, in one bar that is hidden until then.
        self.confirm_text = widgets.HTML()
        self.confirm_button = widgets.Button(
            description="Stop it", button_style="danger", layout=widgets.Layout(width="auto")
        )
        self.confirm_button.on_click(lambda _: self.confirm_stop())
        self.cancel_button = widgets.Button(description="Cancel", layout=widgets.Layout(width="auto"))
        self.cancel_button.on_click(lambda _: self.cancel_stop())
        self.confirm_bar = widgets.HBox(
            [self.confirm_text, self.confirm_button, self.cancel_button], layout=widgets.Layout(display="none")
        )
        self.stopping: str | None = None  # the sandbox the confirm bar is about
        self.header = [widgets.HTML(f"<b>{column}</b>") for column in COLUMNS]
        self.empty = widgets.HTML("<i>No sandboxes: create one above, or run a %%sandbox cell.</i>")
        self.table = widgets.GridBox(
            layout=widgets.Layout(grid_template_columns="repeat(7, auto)", grid_gap="2px 12px", align_items="center")
        )
        self.rows: dict[str, _Row] = {}
        self.widget = widgets.VBox(
            [
                widgets.HTML("<b>Sandboxes</b>"),
                widgets.HBox(
                    [self.refresh_button, self.name_input, self.ttl_input, self.provider_input, self.create_button]
                ),
                self.message,
                self.confirm_bar,
                self.table,
            ]
        )
        self._lock = threading.Lock()  # the refresh thread and the buttons' callbacks
        self._stop = threading.Event()
        self.refresh()
        if refresh_seconds > 0:
            threading.Thread(target=self._auto_refresh, daemon=True).start()

    @property
    def buttons(self) -> dict[tuple[str, str], widgets.Button]:
        return {(verb, sandbox_id): row.buttons[verb] for sandbox_id, row in self.rows.items() for verb in VERBS}

    # ---- what the buttons do
    def refresh(self) -> None:
        try:
            records = self.manager.sandbox_list(verify_status=False)["sandboxes"]
        except SandboxError as exc:
            self.show_error(str(exc))
            return
        with self._lock:
            shown = {record["sandbox_id"] for record in records}
            for sandbox_id in [sandbox_id for sandbox_id in self.rows if sandbox_id not in shown]:
                self.rows.pop(sandbox_id).close()
            for record in records:
                row = self.rows.get(record["sandbox_id"])
                if row is None:
                    row = self.rows[record["sandbox_id"]] = _Row(self, record["sandbox_id"])
                row.show(record)
            cells = list(self.header)
            for record in records:
                cells += self.rows[record["sandbox_id"]].cells
            if not records:
                cells.append(self.empty)
            if tuple(cells) != self.table.children:
                self.table.children = cells
            if self.stopping is not None and self.stopping not in shown:
                self.cancel_stop()

    def act(self, verb: str, sandbox_id: str) -> None:
        """Pause or resume one sandbox; Stop asks first.  Errors are shown in the panel."""
        if verb == "stop":
            self.ask_to_stop(sandbox_id)
            return
        self._do(verb, sandbox_id)

    def ask_to_stop(self, sandbox_id: str) -> None:
        record = next((r for r in self.manager.sandbox_list()["sandboxes"] if r["sandbox_id"] == sandbox_id), None)
        name = printable(record["name"]) if record else sandbox_id
        self.stopping = sandbox_id
        self.confirm_text.value = (
            f"Stop <b>{html.escape(name)}</b> ({html.escape(sandbox_id)})? "
            "Its processes, files and state are destroyed."
        )
        self.confirm_bar.layout.display = "flex"

    def confirm_stop(self) -> None:
        sandbox_id, self.stopping = self.stopping, None
        self.confirm_bar.layout.display = "none"
        if sandbox_id is not None:
            self._do("stop", sandbox_id)

    def cancel_stop(self) -> None:
        self.stopping = None
        self.confirm_bar.layout.display = "none"

    def _do(self, verb: str, sandbox_id: str) -> None:
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
        """Stop refreshing and close every widget of the panel (in the kernel and the browser)."""
        self._stop.set()
        with self._lock:
            for row in self.rows.values():
                row.close()
            self.rows.clear()
        for widget in (*self.header, self.empty):
            _close(widget)
        _close(self.widget)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _close(widget: widgets.Widget) -> None:
    """Close a widget with its children and its layout and style (models of their own, which
    ``close()`` leaves open)."""
    for child in getattr(widget, "children", ()):
        _close(child)
    for part in ("layout", "style"):
        model = getattr(widget, part, None)
        if isinstance(model, widgets.Widget):
            model.close()
    widget.close()


def panel(manager: SandboxManager | None = None, refresh_seconds: float = 5.0) -> SandboxPanel:
    """The sandbox panel for a notebook (display it, or make it a cell's last value)."""
    return SandboxPanel(manager, refresh_seconds=refresh_seconds)
