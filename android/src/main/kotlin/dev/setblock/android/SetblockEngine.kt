package dev.setblock.android

import dev.setblock.GenerateConfig
import dev.setblock.GenerationEvent
import dev.setblock.GenerationListener
import dev.setblock.LoadConfig
import dev.setblock.ModelInfoRecord
import dev.setblock.SbModel
import dev.setblock.SbSession
import dev.setblock.SetblockException
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/** What the engine is doing; observe it from the UI. */
sealed interface EngineState {
    /** No model loaded. */
    data object Idle : EngineState

    /** A model is being loaded. */
    data object Loading : EngineState

    /** Ready to generate. */
    data class Ready(val info: ModelInfoRecord) : EngineState

    /** A generation runs. */
    data object Generating : EngineState

    /** The last operation failed; the message names the problem and the option to change. */
    data class Error(val message: String) : EngineState
}

/**
 * A thin, idiomatic wrapper over the generated bindings: a [StateFlow] of [EngineState] and a
 * cold [Flow] of [GenerationEvent] per reply. Cancelling the collector (structured concurrency)
 * cancels the generation in Rust, including a forward already running. No decoding logic lives
 * here: everything is the Rust core's.
 */
class SetblockEngine(private val io: CoroutineDispatcher = Dispatchers.IO) : AutoCloseable {
    private val _state = MutableStateFlow<EngineState>(EngineState.Idle)
    val state: StateFlow<EngineState> = _state.asStateFlow()

    private var model: SbModel? = null
    private var session: SbSession? = null

    /** Load a model folder (off the main thread). Throws [SetblockException] with the runtime's message. */
    suspend fun load(config: LoadConfig) = withContext(io) {
        _state.value = EngineState.Loading
        try {
            val m = SbModel.load(config)
            close()
            model = m
            session = SbSession(m)
            _state.value = EngineState.Ready(m.info())
        } catch (e: SetblockException) {
            _state.value = EngineState.Error(e.message ?: e.toString())
            throw e
        }
    }

    /** Stream one reply. Collect it; cancel the collecting coroutine to cancel the generation. */
    fun generate(prompt: String, config: GenerateConfig): Flow<GenerationEvent> = callbackFlow {
        val s = session ?: throw IllegalStateException("no model loaded: call load() first")
        val ready = _state.value
        _state.value = EngineState.Generating
        val listener = object : GenerationListener {
            override fun onEvent(event: GenerationEvent) {
                trySendBlocking(event)
            }
        }
        // The blocking call runs in its own coroutine so that a cancelled collector reaches
        // awaitClose at once, which cancels the Rust generation (and the forward in flight).
        launch(io) {
            try {
                s.generate(prompt, config, listener)
                _state.value = ready
                close()
            } catch (e: SetblockException) {
                _state.value = EngineState.Error(e.message ?: e.toString())
                close(e)
            }
        }
        awaitClose {
            s.cancel()
            if (_state.value == EngineState.Generating) _state.value = ready
        }
    }.buffer(Channel.UNLIMITED)

    /** Cancel the reply in progress from any thread (the collector sees the Finished event). */
    fun cancel() {
        session?.cancel()
    }

    /** Forget the conversation; the model stays loaded. */
    fun reset() {
        session?.reset()
    }

    /** Release the session and the model. */
    override fun close() {
        session?.destroy()
        model?.destroy()
        session = null
        model = null
        _state.value = EngineState.Idle
    }
}
