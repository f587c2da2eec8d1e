/** Errors thrown by the runtime are `Error`s whose `name` is their kind. */
export type ErrorKind = "BadInput" | "Unsupported" | "ModelError";

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
}

export declare class Model {
  private constructor();
  readonly backend: string;
  readonly calibration: Calibration;
  readonly dimensions: number;
  embed(texts: string | string[]): Promise<Float32Array[]>;
  unload(): void;
}
