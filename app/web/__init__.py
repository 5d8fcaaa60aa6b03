"""The web page, one package per tab (chat, train, runs, adapters) and the page that holds them (page).

Only UI code lives here: every action calls `core`, all state comes from the store and the run folders (so a
reload or a second tab shows the same truth), and a person's mistake shows as a readable message
(app.web.refusal), never as a stack trace.
"""
