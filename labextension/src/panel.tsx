/**
 * The "Sandboxes" sidebar: one row per sandbox of the user, whatever made it,
 * refreshed by a Poll (backing off on errors, standing by while hidden), with a
 * live countdown to each sandbox's expiry and Pause / Resume / Stop per row.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { ApiError, listSandboxes, sandboxAction } from './api';
import { SandboxConsole } from './console';
import { actionsFor, ISandbox, timeLeft, uptime } from './model';

export interface IPanelOptions {
  refreshSeconds: number;
  confirmStop: boolean;
  showStopped: boolean;
}

/** The panel's toolbar runs these commands (index.ts adds them). */
export interface IToolbarCommands {
  create: () => void;
}

export class SandboxesPanel extends ReactWidget {
  constructor(
    options: IPanelOptions,
    private readonly _toolbar: IToolbarCommands
  ) {
    super();
    this.id = 'nexus-sandboxes';
    this.addClass('jp-NexusSandboxes');
    this._options = { ...options };
    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: options.refreshSeconds * 1000, backoff: true, max: 60 * 1000 },
      name: 'nexus-jupyter:sandboxes',
      standby: () => !this.isVisible || 'when-hidden'
    });
  }

  /** Sandboxes as last read, and when. */
  get sandboxes(): ISandbox[] {
    return this._sandboxes;
  }

  get changed(): Signal<this, void> {
    return this._changed;
  }

  configure(options: Partial<IPanelOptions>): void {
    this._options = { ...this._options, ...options };
    if (options.refreshSeconds) {
      this._poll.frequency = { ...this._poll.frequency, interval: options.refreshSeconds * 1000 };
    }
    void this._poll.refresh();
  }

  /** Read the list now (also what the Poll calls). */
  async refresh(): Promise<void> {
    try {
      this._sandboxes = await listSandboxes(this._options.showStopped);
      this._readAt = Date.now();
      this._error = '';
    } catch (error) {
      this._error = error instanceof ApiError ? error.message : String(error);
      this._changed.emit();
      this.update();
      throw error; // the Poll backs off
    }
    this._changed.emit();
    this.update();
  }

  async act(sandboxId: string, action: 'pause' | 'resume' | 'stop'): Promise<void> {
    if (action === 'stop' && this._options.confirmStop) {
      const sandbox = this._sandboxes.find(item => item.sandbox_id === sandboxId);
      const answer = await showDialog({
        title: 'Stop sandbox?',
        body: `${sandbox?.name ?? sandboxId} (${sandboxId}) and everything in it will be destroyed.`,
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
      });
      if (!answer.button.accept) {
        return;
      }
    }
    this._busy.add(sandboxId);
    this.update();
    try {
      await sandboxAction(sandboxId, action);
      this._error = '';
    } catch (error) {
      this._error = `${action} failed: ${error instanceof ApiError ? error.message : error}`;
    } finally {
      this._busy.delete(sandboxId);
    }
    await this.refresh().catch(() => undefined);
  }

  toggleConsole(sandboxId: string): void {
    if (!this._consoles.delete(sandboxId)) {
      this._consoles.add(sandboxId);
    }
    this.update();
  }

  setShowStopped(show: boolean): void {
    this.configure({ showStopped: show });
  }

  dispose(): void {
    this._poll.dispose();
    window.clearInterval(this._ticker);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll.refresh();
    this._ticker = window.setInterval(() => this.update(), 1000); // the countdowns
  }

  protected onBeforeHide(msg: Message): void {
    super.onBeforeHide(msg);
    window.clearInterval(this._ticker);
  }

  render(): JSX.Element {
    const now = Date.now();
    return (
      <div className="jp-NexusSandboxes-body">
        <div className="jp-NexusSandboxes-toolbar">
          <button className="jp-mod-styled jp-mod-accept jp-NexusSandboxes-new" onClick={() => this._toolbar.create()}>
            New sandbox
          </button>
          <button
            className="jp-mod-styled jp-NexusSandboxes-refresh"
            onClick={() => void this.refresh().catch(() => undefined)}
          >
            Refresh
          </button>
          <label>
            <input
              type="checkbox"
              className="jp-NexusSandboxes-showStopped"
              checked={this._options.showStopped}
              onChange={event => this.setShowStopped(event.target.checked)}
            />{' '}
            show stopped
          </label>
        </div>
        {this._error && (
          <div className="jp-NexusSandboxes-error" role="alert">
            {this._error}
          </div>
        )}
        {this._sandboxes.length === 0 && !this._error ? (
          <div className="jp-NexusSandboxes-empty">No sandboxes.</div>
        ) : (
          <ul className="jp-NexusSandboxes-list">
            {this._sandboxes.map(sandbox => {
              const allowed = actionsFor(sandbox.status);
              const busy = this._busy.has(sandbox.sandbox_id);
              return (
                <li
                  key={sandbox.sandbox_id}
                  className="jp-NexusSandboxes-item"
                  data-sandbox-id={sandbox.sandbox_id}
                  title={sandbox.sandbox_id}
                >
                  <div className="jp-NexusSandboxes-line">
                    <span className="jp-NexusSandboxes-name">{sandbox.name}</span>
                    <span className={`jp-NexusSandboxes-status jp-mod-${sandbox.status}`}>{sandbox.status}</span>
                  </div>
                  <div className="jp-NexusSandboxes-line jp-NexusSandboxes-details">
                    <span className="jp-NexusSandboxes-provider">{sandbox.provider}</span>
                    <span>
                      up <span className="jp-NexusSandboxes-uptime">{uptime(sandbox, this._readAt, now)}</span>
                    </span>
                    <span>
                      left <span className="jp-NexusSandboxes-timeLeft">{timeLeft(sandbox, now)}</span>
                    </span>
                  </div>
                  <div className="jp-NexusSandboxes-actions">
                    {(['pause', 'resume', 'stop'] as const).map(action => (
                      <button
                        key={action}
                        className={`jp-mod-styled jp-NexusSandboxes-${action}`}
                        disabled={busy || !allowed[action]}
                        onClick={() => void this.act(sandbox.sandbox_id, action)}
                      >
                        {action[0].toUpperCase() + action.slice(1)}
                      </button>
                    ))}
                    <button
                      className="jp-mod-styled jp-NexusSandboxes-consoleToggle"
                      disabled={!allowed.run && !this._consoles.has(sandbox.sandbox_id)}
                      onClick={() => this.toggleConsole(sandbox.sandbox_id)}
                    >
                      Console
                    </button>
                    <button
                      className="jp-mod-styled jp-NexusSandboxes-copy"
                      title="Copy the sandbox id"
                      onClick={() => void navigator.clipboard?.writeText(sandbox.sandbox_id)}
                    >
                      Copy id
                    </button>
                  </div>
                  {this._consoles.has(sandbox.sandbox_id) && <SandboxConsole sandboxId={sandbox.sandbox_id} />}
                </li>
              );
            })}
          </ul>
        )}
      </div>
    );
  }

  private _options: IPanelOptions;
  private _poll: Poll;
  private _sandboxes: ISandbox[] = [];
  private _readAt = 0;
  private _error = '';
  private _busy = new Set<string>();
  private _consoles = new Set<string>(); // sandboxes whose console is open
  private _ticker = 0;
  private _changed = new Signal<this, void>(this);
}
