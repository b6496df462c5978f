// The live socket (/api/v1/live): one connection per tab, authenticated with the first frame,
// subscribed to the device that is open. Reconnects with backoff; a token the server refused is
// refreshed once before the next try.
import { useEffect, useState } from "react";
import { accessToken } from "./api";

export type LivePoint = { t: number; metrics: Record<string, number | boolean> };
export type LiveState = "connecting" | "live" | "offline";

type Listener = (points: LivePoint[], dropped: number) => void;
export type FeedEvent = { t: number; tenant_id: string; device_id: string; readings: number; metrics: Record<string, number | boolean> };
type FeedListener = (events: FeedEvent[], dropped: number) => void;
/** The open device's twin changed (reload it), or one of its commands moved to another state. */
export type DeviceChange = { type: "twin"; device: string; version: number } | { type: "command"; device: string; id: string; state: string };

class LiveClient {
  private ws: WebSocket | null = null;
  private device: string | null = null;
  private listener: Listener | null = null;
  private feedListeners = new Set<FeedListener>();
  private changeListeners = new Set<(m: DeviceChange) => void>();
  private retry = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private refreshNext = false;
  state: LiveState = "offline";
  private stateListeners = new Set<(s: LiveState) => void>();

  watch(device: string, listener: Listener): () => void {
    this.device = device;
    this.listener = listener;
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === "live") this.sendSubscribe();
    else this.open();
    return () => {
      if (this.device !== device) return;
      this.device = null;
      this.listener = null;
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "unsubscribe" }));
    };
  }

  /** The event feed: one event per device per stored batch (the tenant's; every tenant's for operators). */
  feed(listener: FeedListener): () => void {
    this.feedListeners.add(listener);
    if (this.feedListeners.size === 1) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === "live") this.ws.send(JSON.stringify({ type: "feed" }));
      else this.open();
    }
    return () => {
      this.feedListeners.delete(listener);
      if (this.feedListeners.size === 0 && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "unfeed" }));
    };
  }

  /** Changes of the watched device's twin and commands (the socket must be watching a device). */
  onChange(listener: (m: DeviceChange) => void): () => void {
    this.changeListeners.add(listener);
    return () => this.changeListeners.delete(listener);
  }

  private wanted(): boolean {
    return this.device !== null || this.feedListeners.size > 0;
  }

  onState(l: (s: LiveState) => void): () => void {
    this.stateListeners.add(l);
    return () => this.stateListeners.delete(l);
  }

  private setState(s: LiveState) {
    this.state = s;
    this.stateListeners.forEach((l) => l(s));
  }

  private sendSubscribe() {
    if (this.device) this.ws?.send(JSON.stringify({ type: "subscribe", device: this.device }));
  }

  private async open() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.setState("connecting");
    const token = await accessToken(this.refreshNext);
    this.refreshNext = false;
    if (!token) {
      this.setState("offline");
      return;
    }
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/live`);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (ev) => {
      const msg = JSON.parse(String(ev.data));
      if (msg.type === "ready") {
        this.retry = 0;
        this.setState("live");
        if (!msg.operator) this.sendSubscribe();
        if (this.feedListeners.size > 0) ws.send(JSON.stringify({ type: "feed" }));
      } else if ((msg.type === "twin" || msg.type === "command") && msg.device === this.device) {
        this.changeListeners.forEach((l) => l(msg as DeviceChange));
      } else if (msg.type === "events") {
        this.feedListeners.forEach((l) => l(msg.events as FeedEvent[], msg.dropped as number));
      } else if (msg.type === "telemetry" && msg.device === this.device) {
        this.listener?.(msg.points as LivePoint[], msg.dropped as number);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.setState("offline");
      if (ev.code === 4401) this.refreshNext = true;
      if (ev.code === 4403) return; // this account may not read tenant data: retrying will not help
      if (this.wanted()) {
        const delay = Math.min(30_000, 500 * 2 ** this.retry++);
        this.timer = setTimeout(() => this.open(), delay);
      }
    };
  }
}

export const live = new LiveClient();

export function useLiveState(): LiveState {
  const [s, set] = useState<LiveState>(live.state);
  useEffect(() => live.onState(set), []);
  return s;
}
