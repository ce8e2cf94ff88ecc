// Runs scripts/qupath_import_cells.groovy (args: script, run folder, image width, height) with QuPath's
// core classes and the scripting calls it needs (getCurrentImageData, addObjects...) bound to a plain
// hierarchy, as QuPath's script editor binds them to the open image. Used by test_qupath.py.
import qupath.lib.objects.hierarchy.PathObjectHierarchy
def hierarchy = new PathObjectHierarchy()
def server = [getWidth: { -> (args[2] as int) }, getHeight: { -> (args[3] as int) }]
def imageData = [getServer: { -> server }]
def binding = new Binding([getCurrentImageData: { -> imageData }, addObjects: { objs -> hierarchy.addObjects(objs) },
                           clearDetections: { -> }, fireHierarchyUpdate: { -> }])
def text = new File(args[0]).text.replace("def RUN = '/path/to/slidecell-out'", "def RUN = '${args[1]}'")
new GroovyShell(binding).evaluate(text)
println "hierarchy: ${hierarchy.getDetectionObjects().size()} detections, ${hierarchy.getCellObjects().size()} cells"
