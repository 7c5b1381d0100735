"""What agent clients need from the local model, independent of any wire format.

    syntax.py    how the model writes a tool call (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`)
    prompt.py    tools and tool turns in the prompt: the model's own template, or a documented fallback
    grammar.py   llama.cpp grammars that force schema-valid tool calls and JSON answers
    calls.py     parsing the model's output stream back into text and tool-call events
    fit.py       shortening a conversation that does not fit the context (the `fit` policy)
    turn.py      all of the above for one request, as the local engine runs it

An API module only converts its wire format to core types (`ChatRequest.tools`, `tool_choice`,
`json_output`) and renders `ToolCallStart` / `ToolCallDelta` back; everything here is shared.
"""
