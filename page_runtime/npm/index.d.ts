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
  /** A llama GGUF (SmolLM2): its URL (ending in .gguf) or its bytes. */
  load(source: string | URL | Uint8Array | ArrayBuffer, options?: { context?: number }): Promise<Model | TextModel>;
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

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface GenerateOptions {
  maxTokens?: number;
  /** 0 (default): greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  signal?: AbortSignal;
}

export declare class TextModel {
  private constructor();
  readonly backend: string;
  tokenize(prompt: string | ChatMessage[]): Uint32Array;
  generate(prompt: string | ChatMessage[], options?: GenerateOptions): Stream;
  unload(): void;
}

export declare class Stream implements AsyncIterable<string> {
  private constructor();
  readonly promptIds: Uint32Array;
  /** Generated ids so far (the stop id left out). */
  readonly ids: number[];
  readonly finish: "stop" | "length" | "aborted" | null;
  [Symbol.asyncIterator](): AsyncIterator<string>;
}
