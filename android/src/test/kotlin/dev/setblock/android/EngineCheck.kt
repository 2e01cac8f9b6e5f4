package dev.setblock.android

import dev.setblock.DecodeMode
import dev.setblock.GenerateConfig
import dev.setblock.GenerationEvent
import dev.setblock.LoadConfig
import dev.setblock.SbModel
import dev.setblock.SbSession
import dev.setblock.SetblockException
import dev.setblock.SlotSelection
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlin.system.exitProcess

/** JVM checks of the generated Kotlin bindings and SetblockEngine (run by android/run-jvm-checks.sh). */
var passed = 0
var failed = 0

fun check(name: String, ok: Boolean) {
    if (ok) passed++ else failed++
    println((if (ok) "ok   " else "FAIL ") + name)
}

fun main(args: Array<String>) {
    val ok = runBlocking { checks(args[0]) }
    exitProcess(if (ok) 0 else 1)
}

suspend fun checks(dir: String): Boolean {
    val prompt = "Question: a=2; b=6; for i in range(3): a=a+b; b=b+4\nAnswer:"
    val cfg = GenerateConfig(
        mode = DecodeMode.SBD, blockSize = 4u, selection = SlotSelection.EbEntropy(0.0),
        maxNewTokens = 24u, chatTemplate = false,
    )
    val engine = SetblockEngine()
    check("state starts idle", engine.state.value == EngineState.Idle)
    engine.load(LoadConfig(modelDir = dir, threads = 1u))
    check("state ready after load", engine.state.value is EngineState.Ready)

    val events = engine.generate(prompt, cfg).toList()
    val text = events.filterIsInstance<GenerationEvent.Block>().joinToString("") { it.text }
    val finished = events.last() as? GenerationEvent.Finished
    check("stream ends with Finished", finished != null)
    check("24 tokens, stop max_tokens", finished?.stats?.generatedTokens == 24u && finished.stats.stopReason == "max_tokens")
    check("first event is PrefillDone", events.first() is GenerationEvent.PrefillDone)
    check("text streamed", text.isNotEmpty())
    check("state ready after the flow", engine.state.value is EngineState.Ready)

    // verified SBD through the Flow: the NTP text, streamed
    engine.reset()
    val ntpText = engine.generate(prompt, cfg.copy(mode = DecodeMode.NTP)).toList()
        .filterIsInstance<GenerationEvent.Block>().joinToString("") { it.text }
    engine.reset()
    val verified = engine.generate(prompt, cfg.copy(selection = SlotSelection.EbEntropy(1e9), verify = true)).toList()
        .filterIsInstance<GenerationEvent.Block>().joinToString("") { it.text }
    check("verified SBD streams the NTP text", verified == ntpText && ntpText.isNotEmpty())

    // collector cancellation: take(2) blocks, then the flow is cancelled -> Rust cancels
    engine.reset()
    val two = engine.generate(prompt, cfg.copy(maxNewTokens = 80u)).filterIsInstance<GenerationEvent.Block>().take(2).toList()
    check("took two blocks", two.size == 2)
    var reset = false
    repeat(200) {
        if (!reset) {
            try { engine.reset(); reset = true } catch (e: SetblockException.Busy) { Thread.sleep(5) }
        }
    }
    check("session free again after a cancelled collector", reset)
    val again = engine.generate(prompt, cfg).toList().last() as GenerationEvent.Finished
    check("usable after cancellation", again.stats.generatedTokens == 24u)
    engine.reset()
    val flowError = runCatching { engine.generate(prompt, cfg.copy(maxNewTokens = 5000u)).toList() }.exceptionOrNull()
    check("an error reaches the collector", flowError is SetblockException.ContextOverflow)
    check("state Error names the knob", (engine.state.value as? EngineState.Error)?.message?.contains("max_new_tokens") == true)

    // async variant + explicit cancel from another thread
    val model = SbModel.load(LoadConfig(modelDir = dir, threads = 1u))
    val session = SbSession(model)
    val r = session.generateAsync(prompt, cfg, null)
    check("generateAsync (suspend)", r.stats.generatedTokens == 24u)
    session.reset()
    val blocks = java.util.concurrent.atomic.AtomicInteger()
    val listener = object : dev.setblock.GenerationListener {
        override fun onEvent(event: GenerationEvent) {
            if (event is GenerationEvent.Block && blocks.incrementAndGet() == 2) {
                val t = Thread { session.cancel() }
                t.start(); t.join()
            }
        }
    }
    val c = session.generate(prompt, cfg.copy(maxNewTokens = 80u), listener)
    check("cancel from another thread at block 2", c.stats.stopReason == "cancelled" && c.stats.generatedTokens == 8u)

    // typed errors with the runtime's message
    val e1 = runCatching { SbModel.load(LoadConfig(modelDir = "/nonexistent")) }.exceptionOrNull()
    check("InvalidModel names the folder", e1 is SetblockException.InvalidModel && e1.message!!.contains("/nonexistent"))
    val e2 = runCatching { session.generate(prompt, cfg.copy(blockSize = 99u), null) }.exceptionOrNull()
    check("InvalidOption names block_size", e2 is SetblockException.InvalidOption && e2.message!!.contains("block_size"))
    val e3 = runCatching { session.generate(prompt, cfg.copy(maxNewTokens = 5000u), null) }.exceptionOrNull()
    check("ContextOverflow names max_context", e3 is SetblockException.ContextOverflow && e3.message!!.contains("max_context"))

    // structured output, and sessions on four threads over one model equal one alone
    session.reset()
    val rx = dev.setblock.OutputConstraint.Regex("a=[0-9]{1,2}; b=[0-9]")
    val so = session.generate(prompt, cfg.copy(mode = DecodeMode.NTP, constraint = rx), null)
    check("a regex constraint holds, stop grammar", Regex("a=[0-9]{1,2}; b=[0-9]").matches(so.text) && so.stats.stopReason == "grammar")
    val alone = SbSession(model).generate(prompt, cfg, null).tokens
    val results = java.util.concurrent.ConcurrentHashMap<Int, List<UInt>>()
    val threads = (0 until 4).map { i -> Thread { results[i] = SbSession(model).generate(prompt, cfg, null).tokens } }
    threads.forEach { it.start() }; threads.forEach { it.join() }
    check("4 threads over one model equal one session alone", results.size == 4 && results.values.all { it == alone })

    // a listener that throws cancels the generation; its error reaches the caller
    session.reset()
    val thrower = object : dev.setblock.GenerationListener {
        override fun onEvent(event: GenerationEvent) {
            if (event is GenerationEvent.Block) throw IllegalStateException("the app's own failure")
        }
    }
    val e4 = runCatching { session.generate(prompt, cfg, thrower) }.exceptionOrNull()
    check("a throwing listener -> SetblockException.Listener", e4 is SetblockException.Listener && e4.message!!.contains("the app's own failure"))
    session.destroy(); model.destroy(); engine.close()
    check("state idle after close", engine.state.value == EngineState.Idle)
    println("$passed passed, $failed failed")
    return failed == 0
}
