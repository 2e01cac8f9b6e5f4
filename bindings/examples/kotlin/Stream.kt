// Stream a reply from the demo model through the Kotlin binding (JVM), then print the stats.
// Run: bindings/examples/kotlin/run.sh [MODEL_DIR] [PROMPT]
import dev.setblock.DecodeMode
import dev.setblock.GenerateConfig
import dev.setblock.GenerationEvent
import dev.setblock.LoadConfig
import dev.setblock.android.SetblockEngine
import kotlinx.coroutines.runBlocking

fun main(args: Array<String>) = runBlocking<Unit> {
    val dir = args.getOrElse(0) { "models/demo" }
    val prompt = args.getOrElse(1) { "sort 42 17 88 17 30 61" }
    val engine = SetblockEngine()
    engine.load(LoadConfig(modelDir = dir))
    for (mode in listOf(DecodeMode.SBD, DecodeMode.AUTO, DecodeMode.NTP)) {
        engine.generate(prompt, GenerateConfig(mode = mode)).collect { event ->
            when (event) {
                is GenerationEvent.Block -> print(event.text)
                is GenerationEvent.Finished -> println(
                    "\n[$mode: ${event.stats.generatedTokens} tokens in ${event.stats.forwardPasses} forwards, stop ${event.stats.stopReason}]"
                )
                is GenerationEvent.PrefillDone -> {}
            }
        }
        engine.reset()
    }
    engine.close()
}
