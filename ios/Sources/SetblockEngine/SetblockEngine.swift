// SetblockEngine: an actor over the generated bindings with an AsyncThrowingStream per reply.
// Cancelling the consuming Task (or breaking out of the loop) cancels the generation in Rust,
// including a forward already running. Written with care but NOT compiled: no Swift toolchain is
// available on this project's machines.
import Foundation
import Setblock

public enum EngineState: Sendable, Equatable {
    case idle
    case loading
    case ready
    case generating
    case failed(String)
}

private final class StreamListener: GenerationListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<GenerationEvent, Error>.Continuation
    init(_ c: AsyncThrowingStream<GenerationEvent, Error>.Continuation) { continuation = c }
    func onEvent(event: GenerationEvent) { continuation.yield(event) }
}

public actor SetblockEngine {
    public private(set) var state: EngineState = .idle
    private var model: SbModel?
    private var session: SbSession?

    public init() {}

    /// Load a model folder; throws SetblockError with the runtime's message.
    public func load(_ config: LoadConfig) async throws {
        state = .loading
        do {
            let m = try await Task.detached { try SbModel.load(config: config) }.value
            model = m
            session = try SbSession(model: m)
            state = .ready
        } catch {
            state = .failed("\(error)")
            throw error
        }
    }

    /// Stream one reply.
    public func generate(_ prompt: String, config: GenerateConfig) throws -> AsyncThrowingStream<GenerationEvent, Error> {
        guard let session else { throw SetblockEngineError.noModel }
        state = .generating
        return AsyncThrowingStream { continuation in
            let listener = StreamListener(continuation)
            let worker = Task.detached {
                do {
                    _ = try session.generate(prompt: prompt, config: config, listener: listener)
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
                await self.finished()
            }
            continuation.onTermination = { termination in
                if case .cancelled = termination { session.cancel() }
                _ = worker
            }
        }
    }

    private func finished() { if state == .generating { state = .ready } }

    /// Cancel the reply in progress.
    public func cancel() { session?.cancel() }

    /// Forget the conversation.
    public func reset() throws { try session?.reset() }
}

public enum SetblockEngineError: Error {
    case noModel
}
