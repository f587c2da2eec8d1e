/** Errors thrown by the runtime are `Error`s whose `name` is their kind. */
export type ErrorKind = "BadInput" | "Unsupported" | "ModelError" | "Refused";

export type Backend = "auto" | "webgpu" | "webnn" | "cpu";

export interface Capabilities {
  user_agent: string;
  hardware_concurrency: number;
  device_memory_gib: number | null;
  webgpu: Record<string, unknown>;
  webnn: { api_present: boolean; contexts: { device_type: string; ok: boolean; error: string | null }[] };
}

export type Calibration = ({ backend: string; ms: number } | { error: string })[];

/** A folder URL with model.safetensors, tokenizer.json and config.json, or their contents. */
export type ModelSource =
  | string
  | URL
  | {
      safetensors: Uint8Array | ArrayBuffer;
      tokenizer: string | Uint8Array | ArrayBuffer;
      config?: string | Uint8Array | ArrayBuffer | null;
    };

export declare class Runtime {
  private constructor();
  static create(options?: { backend?: Backend }): Promise<Runtime>;
  readonly capabilities: Capabilities;
  load(source: ModelSource): Promise<Model>;
  /** Lend this tab to a pool (`tabpool serve --join`); a refused token throws `Refused`. */
  join(url: string | URL, options: { token: string }): Promise<Lending>;
}

export declare class Lending {
  private constructor();
  /** The id the pool gave this tab. */
  readonly tabId: number;
  /** Settles when the lending ends: the pool let the tab go (its reason), or the page left. */
  readonly closed: Promise<{ code: number; reason: string }>;
  /** Stop lending; the pool retries this tab's work elsewhere. */
  leave(): void;
}

export declare class Model {
  private constructor();
  readonly backend: string;
  readonly calibration: Calibration;
  readonly dimensions: number;
  embed(texts: string | string[]): Promise<Float32Array[]>;
  unload(): void;
}
