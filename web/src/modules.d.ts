/* Types of what the build loads that ships none: style sheets (as text) and noVNC. */

declare module '*.css' {
  const text: string;
  export default text;
}

declare module '@novnc/novnc' {
  export default class RFB extends EventTarget {
    constructor(target: HTMLElement, url: string, options?: { shared?: boolean; wsProtocols?: string[] });
    scaleViewport: boolean;
    focusOnClick: boolean;
    resizeSession: boolean;
    disconnect(): void;
    sendCtrlAltDel(): void;
    sendKey(keysym: number, code: string | null, down?: boolean): void;
    focus(): void;
  }
}
