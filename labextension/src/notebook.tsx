/**
 * The notebook's own sandbox in its toolbar: the status of the sandbox its
 * `%%sandbox` cells use by default (none yet, starting, active, paused, expired,
 * stopped), found by the notebook's kernel id, which the magics record on it; a
 * click opens its row in the Sandboxes sidebar.
 */
import { DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
import { ReactWidget } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { IDisposable } from '@lumino/disposable';
import { Signal } from '@lumino/signaling';
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
    _context.sessionContext.kernelChanged.connect(() => this._lookUpHistory(), this);
    this._lookUpHistory();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._stopWatching();
    Signal.clearData(this);
    super.dispose();
  }

  /** The notebook's kernel (its id names the sandbox its cells use, whatever the notebook is called). */
  private get _kernelId(): string | undefined {
    return this._context.sessionContext.session?.kernel?.id;
  }

  /** When the kernel's sandbox leaves the list (stopped, expired), ask once how it ended. */
  private _follow(): void {
    const live = this._list.ofKernel(this._kernelId);
    if (live) {
      this._last = live;
    } else if (this._last && this._last.status !== 'stopped' && !this._list.options.showStopped) {
      this._lookUpHistory();
    }
    this.update();
  }

  private _lookUpHistory(): void {
    const kernel = this._kernelId;
    const asked = ++this._asked;
    if (!kernel) {
      this._last = undefined;
      this.update();
      return;
    }
    listSandboxes({ includeStopped: true, kernelId: kernel }).then(
      found => {
        if (this.isDisposed || asked !== this._asked) {
          return; // closed meanwhile, or a newer question (another kernel) was asked
        }
        this._last = found.find(item => !this._list.userId || item.user_id === this._list.userId);
        this.update();
      },
      () => undefined // the sidebar shows why the API cannot be reached
    );
  }

  render(): JSX.Element {
    const sandbox = this._list.ofKernel(this._kernelId) ?? this._last;
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
  }

  private _last: ISandbox | undefined;
  private _asked = 0;
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
