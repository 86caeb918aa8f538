/**
 * The notebook's own sandbox in its toolbar: the status of the sandbox its
 * `%%sandbox` cells made (none yet, starting, active, paused, expired, stopped);
 * a click opens its row in the Sandboxes sidebar.
 */
import { DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { IDisposable } from '@lumino/disposable';
import * as React from 'react';

import { listSandboxes } from './api';
import { ISandbox, notebookState } from './model';
import { SandboxList } from './sandboxes';

class NotebookSandboxItem extends ReactWidget {
  constructor(
    private readonly _list: SandboxList,
    private readonly _context: DocumentRegistry.Context,
    private readonly _commands: CommandRegistry,
    private readonly _openCommand: string
  ) {
    super();
    this.addClass('jp-NexusNotebookSandbox');
    this._stopWatching = _list.addViewer(() => this.isVisible);
    _list.changed.connect(this._follow, this);
    _context.pathChanged.connect(() => this._lookUpHistory(), this);
    this._lookUpHistory();
  }

  dispose(): void {
    this._stopWatching();
    super.dispose();
  }

  /** When the notebook's live sandbox goes, ask once how it ended (the list holds live ones only). */
  private _follow(): void {
    const live = this._list.ofNotebook(this._context.path);
    if (live) {
      this._last = live;
    } else if (this._last && this._last.status !== 'stopped') {
      this._lookUpHistory();
    }
  }

  private _lookUpHistory(): void {
    const path = this._context.path;
    listSandboxes({ includeStopped: true, notebookPath: path }).then(
      made => {
        if (path === this._context.path && !this._list.ofNotebook(path)) {
          this._last = made[made.length - 1];
          this.update();
        }
      },
      () => undefined // the sidebar shows why the API cannot be reached
    );
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this._list.changed}>
        {() => {
          const sandbox = this._list.ofNotebook(this._context.path) ?? this._last;
          const state = notebookState(sandbox);
          return (
            <button
              className={`jp-ToolbarButtonComponent jp-NexusNotebookSandbox-button jp-mod-${state.replace(' ', '-')}`}
              title={
                sandbox
                  ? `This notebook's sandbox: ${sandbox.name} (${sandbox.sandbox_id}), ${state}. Show it in Sandboxes.`
                  : 'This notebook has no sandbox yet: a %%sandbox cell makes one.'
              }
              onClick={() => void this._commands.execute(this._openCommand, { sandboxId: sandbox?.sandbox_id ?? '' })}
            >
              <span className="jp-NexusNotebookSandbox-label">sandbox:</span>{' '}
              <span className="jp-NexusNotebookSandbox-state">{state}</span>
            </button>
          );
        }}
      </UseSignal>
    );
  }

  private _last: ISandbox | undefined;
  private _stopWatching: () => void;
}

/** Adds the item to every notebook's toolbar. */
export class NotebookSandboxExtension implements DocumentRegistry.IWidgetExtension<
  DocumentWidget,
  DocumentRegistry.IModel
> {
  constructor(
    private readonly _list: SandboxList,
    private readonly _commands: CommandRegistry,
    private readonly _openCommand: string
  ) {}

  createNew(widget: DocumentWidget, context: DocumentRegistry.Context): IDisposable {
    const item = new NotebookSandboxItem(this._list, context, this._commands, this._openCommand);
    widget.toolbar.insertItem(10, 'nexusSandbox', item);
    return item;
  }
}
