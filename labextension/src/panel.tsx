/**
 * The "Sandboxes" sidebar: one row per sandbox of the user (every user's, for an
 * admin who asks), whatever made it, from the shared SandboxList; a live countdown
 * to each sandbox's expiry; Pause / Resume / Stop per row, and a menu opening its
 * console, its files and its metrics under the row.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { Menu } from '@lumino/widgets';
import * as React from 'react';

import { ApiError, sandboxAction } from './api';
import { SandboxConsole } from './console';
import { SandboxFiles } from './files';
import { SandboxMetrics } from './metrics';
import { actionsFor, timeLeft, uptime, whereItRuns } from './model';
import { SandboxList } from './sandboxes';

/** What can be opened under a row. */
export type Section = 'console' | 'files' | 'metrics';

/** The command ids the panel's buttons and row menu run (index.ts adds them). */
export interface IPanelCommands {
  registry: CommandRegistry;
  create: string;
  copyId: string;
  sections: Record<Section, string>;
  openNotebook: string;
}

export class SandboxesPanel extends ReactWidget {
  constructor(
    readonly list: SandboxList,
    private readonly _commands: IPanelCommands,
    options: { confirmStop: boolean }
  ) {
    super();
    this.id = 'nexus-sandboxes';
    this.addClass('jp-NexusSandboxes');
    this.confirmStop = options.confirmStop;
    list.changed.connect(this.update, this);
    this._stopWatching = list.addViewer(() => this.isVisible);
  }

  confirmStop: boolean;

  refresh(): Promise<void> {
    return this.list.refresh().catch(() => undefined);
  }

  async act(sandboxId: string, action: 'pause' | 'resume' | 'stop'): Promise<void> {
    if (action === 'stop' && this.confirmStop) {
      const sandbox = this.list.sandboxes.find(item => item.sandbox_id === sandboxId);
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
      const record = await sandboxAction(sandboxId, action);
      this._error = '';
      this._busy.delete(sandboxId);
      this.list.put(record); // the row changes now, not at the next read
    } catch (error) {
      this._error = `${action} failed: ${error instanceof ApiError ? error.message : error}`;
      this._busy.delete(sandboxId);
      await this.refresh(); // what is true now, for the message to make sense
    }
  }

  /** Open (or close) a section under a sandbox's row. */
  toggle(sandboxId: string, section: Section, open?: boolean): void {
    const key = `${sandboxId}/${section}`;
    if (open ?? !this._open.has(key)) {
      this._open.add(key);
    } else {
      this._open.delete(key);
    }
    this.update();
  }

  isOpen(sandboxId: string, section: Section): boolean {
    return this._open.has(`${sandboxId}/${section}`);
  }

  /** Scroll to a sandbox's row and mark it for a moment. */
  reveal(sandboxId: string): void {
    this._revealed = sandboxId;
    this.update();
    requestAnimationFrame(() =>
      this.node.querySelector(`[data-sandbox-id="${CSS.escape(sandboxId)}"]`)?.scrollIntoView({ block: 'nearest' })
    );
    window.setTimeout(() => {
      if (this._revealed === sandboxId) {
        this._revealed = '';
        this.update();
      }
    }, 3000);
  }

  dispose(): void {
    window.clearInterval(this._ticker);
    this._stopWatching();
    this.list.changed.disconnect(this.update, this);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this._ticker = window.setInterval(() => this.update(), 1000); // the countdowns
  }

  protected onBeforeHide(msg: Message): void {
    super.onBeforeHide(msg);
    window.clearInterval(this._ticker);
  }

  private _openMenu(sandboxId: string, event: React.MouseEvent): void {
    const { registry, copyId, sections } = this._commands;
    const menu = new Menu({ commands: registry });
    menu.addClass('jp-NexusSandboxes-menu');
    for (const command of [sections.console, sections.files, sections.metrics, copyId]) {
      menu.addItem({ command, args: { sandboxId } });
    }
    menu.open(event.clientX, event.clientY);
  }

  render(): JSX.Element {
    const now = Date.now();
    const { list } = this;
    const error = this._error || list.error;
    const commands = this._commands;
    return (
      <div className="jp-NexusSandboxes-body">
        <div className="jp-NexusSandboxes-toolbar">
          <button
            className="jp-mod-styled jp-mod-accept jp-NexusSandboxes-new"
            onClick={() => void commands.registry.execute(commands.create)}
          >
            New sandbox
          </button>
          <button className="jp-mod-styled jp-NexusSandboxes-refresh" onClick={() => void this.refresh()}>
            Refresh
          </button>
          <label>
            <input
              type="checkbox"
              className="jp-NexusSandboxes-showStopped"
              checked={list.options.showStopped}
              onChange={event => list.configure({ showStopped: event.target.checked })}
            />{' '}
            show stopped
          </label>
          {list.isAdmin && (
            <select
              className="jp-NexusSandboxes-whose"
              aria-label="Whose sandboxes"
              value={list.options.allUsers ? 'all' : 'mine'}
              onChange={event => list.configure({ allUsers: event.target.value === 'all' })}
            >
              <option value="mine">mine</option>
              <option value="all">all users</option>
            </select>
          )}
        </div>
        {error && (
          <div className="jp-NexusSandboxes-error" role="alert">
            {error}
          </div>
        )}
        {list.sandboxes.length === 0 && !error ? (
          <div className="jp-NexusSandboxes-empty">No sandboxes.</div>
        ) : (
          <ul className="jp-NexusSandboxes-list">
            {list.sandboxes.map(sandbox => {
              const allowed = actionsFor(sandbox.status);
              const busy = this._busy.has(sandbox.sandbox_id);
              return (
                <li
                  key={sandbox.sandbox_id}
                  className={`jp-NexusSandboxes-item${this._revealed === sandbox.sandbox_id ? ' jp-mod-revealed' : ''}`}
                  data-sandbox-id={sandbox.sandbox_id}
                  title={sandbox.sandbox_id}
                >
                  <div className="jp-NexusSandboxes-line">
                    <span className="jp-NexusSandboxes-name">{sandbox.name}</span>
                    <span className={`jp-NexusSandboxes-status jp-mod-${sandbox.status}`}>{sandbox.status}</span>
                  </div>
                  <div className="jp-NexusSandboxes-line jp-NexusSandboxes-details">
                    <span className="jp-NexusSandboxes-provider">{whereItRuns(sandbox)}</span>
                    <span>
                      up <span className="jp-NexusSandboxes-uptime">{uptime(sandbox, list.readAt, now)}</span>
                    </span>
                    <span>
                      left <span className="jp-NexusSandboxes-timeLeft">{timeLeft(sandbox, now)}</span>
                    </span>
                    {list.options.allUsers && <span className="jp-NexusSandboxes-user">{sandbox.user_id}</span>}
                  </div>
                  {sandbox.notebook && (
                    <div className="jp-NexusSandboxes-line jp-NexusSandboxes-details">
                      {sandbox.notebook_path ? (
                        <a
                          className="jp-NexusSandboxes-notebook"
                          title={`Open ${sandbox.notebook_path}`}
                          onClick={() =>
                            void commands.registry.execute(commands.openNotebook, { path: sandbox.notebook_path! })
                          }
                        >
                          {sandbox.notebook_path}
                        </a>
                      ) : (
                        <span className="jp-NexusSandboxes-notebook">{sandbox.notebook}</span>
                      )}
                    </div>
                  )}
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
                      className="jp-mod-styled jp-NexusSandboxes-more"
                      title="Console, files, metrics, copy id"
                      aria-label="More actions"
                      onClick={event => this._openMenu(sandbox.sandbox_id, event)}
                    >
                      ⋯
                    </button>
                  </div>
                  {this.isOpen(sandbox.sandbox_id, 'console') && <SandboxConsole sandboxId={sandbox.sandbox_id} />}
                  {this.isOpen(sandbox.sandbox_id, 'files') && <SandboxFiles sandboxId={sandbox.sandbox_id} />}
                  {this.isOpen(sandbox.sandbox_id, 'metrics') && (
                    <SandboxMetrics sandboxId={sandbox.sandbox_id} shown={() => this.isVisible} />
                  )}
                </li>
              );
            })}
          </ul>
        )}
      </div>
    );
  }

  private _error = '';
  private _busy = new Set<string>();
  private _open = new Set<string>(); // "sandboxId/section" open under rows
  private _revealed = '';
  private _ticker = 0;
  private _stopWatching: () => void;
}
