/**
 * The sandboxes as last read from the REST API, shared by the sidebar and every
 * notebook's toolbar item: one Poll for all of them (backing off on errors), in
 * standby unless one of them is on screen.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, listSandboxes, whoAmI } from './api';
import { ISandbox } from './model';

export interface IListOptions {
  refreshSeconds: number;
  showStopped: boolean;
  allUsers: boolean; // every user's (offered to admins only)
}

export class SandboxList {
  constructor(options: IListOptions) {
    this._options = { ...options };
    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: SandboxList._frequency(options.refreshSeconds),
      name: 'nexus-jupyter:sandboxes',
      standby: () => ![...this._viewers].some(shown => shown()) || 'when-hidden'
    });
  }

  get sandboxes(): ISandbox[] {
    return this._sandboxes;
  }

  /** When the list was read (ms since the epoch), for uptimes between reads. */
  get readAt(): number {
    return this._readAt;
  }

  /** Why the last read failed ('' when it did not). */
  get error(): string {
    return this._error;
  }

  get options(): IListOptions {
    return this._options;
  }

  /** Who the list is for (known after the first read). */
  get userId(): string {
    return this._userId;
  }

  /** Whether the user may list every user's sandboxes (known after the first read). */
  get isAdmin(): boolean {
    return this._isAdmin;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  configure(options: Partial<IListOptions>): void {
    this._options = { ...this._options, ...options };
    if (options.refreshSeconds) {
      this._poll.frequency = SandboxList._frequency(options.refreshSeconds);
    }
    void this._poll.refresh();
  }

  /** Keep the list fresh while ``shown()`` says a view of it is on screen. */
  addViewer(shown: () => boolean): () => void {
    this._viewers.add(shown);
    void this._poll.refresh();
    return () => this._viewers.delete(shown);
  }

  /** The user's sandbox that a notebook's kernel uses by default, if the list holds it. */
  ofKernel(kernelId: string | undefined): ISandbox | undefined {
    if (!kernelId) {
      return undefined;
    }
    // the user's own only: anyone may name any kernel id on their own sandboxes
    return this._sandboxes.find(item => item.kernel_id === kernelId && item.user_id === this._userId);
  }

  /** Show an action's answer at once (the next read confirms it): a stopped sandbox leaves the
   * list unless stopped ones are shown. */
  put(record: ISandbox): void {
    const kept = this._sandboxes.filter(item => item.sandbox_id !== record.sandbox_id);
    const index = this._sandboxes.findIndex(item => item.sandbox_id === record.sandbox_id);
    if (record.status !== 'stopped' || this._options.showStopped) {
      kept.splice(index < 0 ? kept.length : index, 0, record);
    }
    this._sandboxes = kept;
    this._answered = ++this._asked; // a read already under way may predate the action: ignored
    this._changed.emit();
  }

  /** Read the list now (also what the Poll calls; a failure makes it back off). */
  async refresh(): Promise<void> {
    try {
      if (this._whoami === null) {
        this._whoami = whoAmI().then(
          answer => {
            this._isAdmin = answer.is_admin;
            this._userId = answer.user_id;
          },
          () => (this._whoami = null) // asked again next time
        );
      }
      await this._whoami;
      const asked = ++this._asked;
      const sandboxes = await listSandboxes({
        includeStopped: this._options.showStopped,
        allUsers: this._options.allUsers && this._isAdmin
      });
      if (asked < this._answered) {
        return; // a newer read (a button's, or after the filter changed) already answered
      }
      this._answered = asked;
      this._sandboxes = sandboxes;
      this._readAt = Date.now();
      this._error = '';
    } catch (error) {
      this._error = error instanceof ApiError ? error.message : String(error);
      this._changed.emit();
      throw error;
    }
    this._changed.emit();
  }

  private static _frequency(seconds: number) {
    const interval = seconds * 1000;
    return { interval, backoff: true, max: Math.max(60 * 1000, interval) }; // Poll refuses interval > max
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private _options: IListOptions;
  private _poll: Poll;
  private _sandboxes: ISandbox[] = [];
  private _readAt = 0;
  private _error = '';
  private _isAdmin = false;
  private _userId = '';
  private _asked = 0;
  private _answered = 0;
  private _whoami: Promise<unknown> | null = null;
  private _viewers = new Set<() => boolean>();
  private _changed = new Signal<this, void>(this);
}
