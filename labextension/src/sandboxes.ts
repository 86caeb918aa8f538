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
      frequency: { interval: options.refreshSeconds * 1000, backoff: true, max: 60 * 1000 },
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
      this._poll.frequency = { ...this._poll.frequency, interval: options.refreshSeconds * 1000 };
    }
    void this._poll.refresh();
  }

  /** Keep the list fresh while ``shown()`` says a view of it is on screen. */
  addViewer(shown: () => boolean): () => void {
    this._viewers.add(shown);
    void this._poll.refresh();
    return () => this._viewers.delete(shown);
  }

  /** The newest live sandbox a notebook made (``path`` as Lab names it). */
  ofNotebook(path: string): ISandbox | undefined {
    const made = this._sandboxes.filter(item => item.notebook_path === path && item.status !== 'stopped');
    return made[made.length - 1];
  }

  /** Read the list now (also what the Poll calls; a failure makes it back off). */
  async refresh(): Promise<void> {
    try {
      if (this._whoami === null) {
        this._whoami = whoAmI().then(
          answer => (this._isAdmin = answer.is_admin),
          () => (this._whoami = null) // asked again next time
        );
      }
      await this._whoami;
      this._sandboxes = await listSandboxes({
        includeStopped: this._options.showStopped,
        allUsers: this._options.allUsers && this._isAdmin
      });
      this._readAt = Date.now();
      this._error = '';
    } catch (error) {
      this._error = error instanceof ApiError ? error.message : String(error);
      this._changed.emit();
      throw error;
    }
    this._changed.emit();
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
  private _whoami: Promise<unknown> | null = null;
  private _viewers = new Set<() => boolean>();
  private _changed = new Signal<this, void>(this);
}
